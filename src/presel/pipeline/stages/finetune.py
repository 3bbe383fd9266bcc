"""``ref_model`` and ``final_model``: fine-tuning of a base VLM (on the annotated reference set / the result)."""

from __future__ import annotations

from presel.errors import PreselError
from presel.finetune.train import FinetuneConfig
from presel.pipeline.base import Estimate, Sizes, Stage


class _Finetune(Stage):
    config = FinetuneConfig
    extra = ("model", "image_root")
    paths = ("image_root",)
    resumable = True
    data_output: str = ""

    def samples(self, sizes: Sizes) -> int:
        raise NotImplementedError

    def estimate(self, sizes: Sizes) -> Estimate:
        ep, n = int(self.section.get("epochs", 1)), self.samples(sizes)
        return Estimate(f"fine-tune {self.section.get('model')} on {n:,} samples x {ep} epoch(s)",
                        sizes.hours(n * ep, "finetune_samples_per_s"))

    def validate(self) -> None:
        super().validate()
        if not self.model():
            raise PreselError(f"{self.cfg.source}: {self.name}.model (the base VLM: hub id, directory or llava-small) "
                              "is missing")

    def run(self) -> None:
        from presel.finetune.train import finetune

        image_root = self.cfg.path(self.section.get("image_root")) or self.ctx.pool().image_root
        finetune(self.ctx.outputs[self.data_output], self.model(), self.out_dir, self.conf,
                 image_root=image_root)


class RefModel(_Finetune):
    name = "ref_model"
    needs = ("annotate",)
    data_output = "annotated"
    outputs = {"ref_model": ""}

    def samples(self, sizes: Sizes) -> int:
        return sizes.reference

    def wire(self) -> bool:
        data = self.need("annotated", "fine-tunes on the annotated reference set: add an 'annotate' section")
        self.files = {"data": data}
        return True


class FinalModel(_Finetune):
    name = "final_model"
    needs = ("generate",)
    data_output = "train_json"
    outputs = {"final_model": ""}

    def samples(self, sizes: Sizes) -> int:
        return sizes.budget

    def wire(self) -> bool:
        self.need("train_json", "fine-tunes on the generated set: add a 'generate' section")
        return True
