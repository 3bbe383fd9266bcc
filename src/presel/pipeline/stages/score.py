"""``score``: instruction relevance scores (IRS) of the annotated reference set with the reference model."""

from __future__ import annotations

from presel.errors import PreselError
from presel.importance.scoring import ScoreConfig
from presel.pipeline.base import Estimate, Sizes, Stage


class Score(Stage):
    name = "score"
    config = ScoreConfig
    needs = ("annotate", "ref_model")
    resumable = True
    outputs = {"irs": ""}

    def estimate(self, sizes: Sizes) -> Estimate:
        return Estimate(f"IRS: {sizes.reference:,} samples x 2 passes",
                        sizes.hours(sizes.reference, "score_samples_per_s"))

    def wire(self) -> bool:
        data = self.need("annotated", "needs the annotated reference set: add an 'annotate' section")
        self.scorer = self.model() or self.ctx.outputs.get("ref_model")
        if self.scorer is None:
            raise PreselError(f"{self.cfg.source}: score.model is missing and there is no 'ref_model' stage to score with")
        self.files = {"data": data}
        return True

    def run(self) -> None:
        from presel.cache import resolve_model
        from presel.config import from_dict
        from presel.importance.scoring import score_to_dir

        s = self.config_section()
        s["model"] = resolve_model(str(self.scorer))
        s.setdefault("image_root", str(self.ctx.pool().image_root))
        score_to_dir(self.files["data"], self.out_dir, from_dict(ScoreConfig, s, source=self.source))
