"""``report``: one HTML page about the run (reads what the other stages wrote)."""

from __future__ import annotations

from presel.pipeline.base import Estimate, Sizes, Stage


class Report(Stage):
    name = "report"
    outputs = {"report": "report.html"}

    def estimate(self, sizes: Sizes) -> Estimate:
        return Estimate("HTML report")

    def wire(self) -> bool:
        self.before = tuple(self.ctx.planned)  # every stage before it
        return True

    def upstream(self) -> tuple[str, ...]:
        return self.before

    def run(self) -> None:
        from presel.report.html import build_report

        build_report(self.cfg.out, self.out_dir / "report.html")
