"""``annotate``: the reference set's instructions, from an annotations file (oracle) or the user's annotated file."""

from __future__ import annotations

from presel.errors import PreselError
from presel.pipeline.base import Estimate, Sizes, Stage


class Annotate(Stage):
    name = "annotate"
    extra = ("annotations", "annotated", "match")
    paths = ("annotations", "annotated")
    needs = ("reference",)
    outputs = {"annotated": "train.json"}

    def estimate(self, sizes: Sizes) -> Estimate:
        return Estimate(f"{sizes.reference:,} reference instructions")

    def validate(self) -> None:
        super().validate()
        from presel.generate.oracle import MATCHES

        if self.section.get("match", "auto") not in MATCHES:
            raise PreselError(f"{self.cfg.source}: annotate.match={self.section['match']!r} must be one of "
                              f"{', '.join(MATCHES)}")

    def wire(self) -> bool:
        if self.section.get("annotated"):  # the user's own annotated reference file: nothing to run
            self.ctx.outputs["annotated"] = self.cfg.path(self.section["annotated"])
            self.ctx.outputs["annotated_given"] = self.ctx.outputs["annotated"]
            return False
        self.need("reference", "needs a reference set: add a 'reference' section")
        if not self.section.get("annotations"):
            raise PreselError(f"{self.cfg.source}: 'annotate' needs 'annotations' (a LLaVA file with the reference "
                              "set's instructions) or 'annotated' (your annotated reference file)")
        self.files = {"annotations": self.cfg.path(self.section["annotations"])}
        return True

    def run(self) -> None:
        from presel.generate.oracle import oracle_to_dir

        oracle_to_dir(self.ctx.outputs["reference"], self.files["annotations"], self.out_dir,
                      match=self.section.get("match", "auto"), overwrite=True)
