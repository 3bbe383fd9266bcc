"""``weights``: task weights, a softmax over the tasks' IRS."""

from __future__ import annotations

from presel.errors import PreselError
from presel.pipeline.base import Stage


class Weights(Stage):
    name = "weights"
    dir = "weights"
    extra = ("tau",)
    needs = ("score",)
    outputs = {"weights": "task_weights.json"}

    def validate(self) -> None:
        super().validate()
        tau = self.section.get("tau", "auto")
        if tau not in (None, "auto") and (isinstance(tau, bool) or not isinstance(tau, (int, float)) or tau <= 0):
            raise PreselError(f"{self.cfg.source}: weights.tau={tau!r} must be 'auto' (1/sqrt(M)) or a number > 0")

    def wire(self) -> bool:
        self.need("irs", "needs IRS scores: add a 'score' section")
        return True

    def run(self) -> None:
        from presel.importance.weights import compute_weights, write_weights

        tau = self.section.get("tau", "auto")
        w = compute_weights(self.ctx.outputs["irs"], tau=None if tau in (None, "auto") else float(tau))
        write_weights(self.ctx.outputs["weights"], w)
