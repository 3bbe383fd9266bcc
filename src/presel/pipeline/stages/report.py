"""``report``: one HTML page about the run (reads what the other stages wrote)."""

from __future__ import annotations

from presel.pipeline.base import Stage


class Report(Stage):
    name = "report"
    dir = "report"
    outputs = {"report": "report.html"}

    def wire(self) -> bool:
        self.needs = tuple(self.ctx.planned)  # type: ignore[misc]  # every stage before it
        return True

    def run(self) -> None:
        from presel.report.html import build_report

        build_report(self.cfg.out, self.out_dir / "report.html")
