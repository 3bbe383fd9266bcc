"""``weights``: task weights, a softmax over the tasks' IRS."""

from __future__ import annotations

from presel.importance.weights import WeightsConfig
from presel.pipeline.base import Estimate, Sizes, Stage


class Weights(Stage):
    name = "weights"
    config = WeightsConfig
    needs = ("score",)
    outputs = {"weights": "task_weights.json"}

    def estimate(self, sizes: Sizes) -> Estimate:
        m = len(sizes.tasks)
        return Estimate(f"softmax over {m} task scores, tau = 1/sqrt({m})")

    def wire(self) -> bool:
        self.need("irs", "needs IRS scores: add a 'score' section")
        return True

    def run(self) -> None:
        from presel.importance.weights import compute_weights, write_weights

        write_weights(self.ctx.outputs["weights"], compute_weights(self.ctx.outputs["irs"], tau=self.conf.temperature))
