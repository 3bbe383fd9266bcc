"""``embed``: image features of the pool (a resumable feature store)."""

from __future__ import annotations

from presel.features.extract import EmbedConfig
from presel.pipeline.base import Estimate, Sizes, Stage


class Embed(Stage):
    name = "embed"
    config = EmbedConfig
    resumable = True
    outputs = {"features": ""}

    def estimate(self, sizes: Sizes) -> Estimate:
        return Estimate(f"{self.section.get('model', 'facebook/dinov2-base')} on {sizes.images:,} distinct images",
                        sizes.hours(sizes.images, "embed_images_per_s"))

    def wire(self) -> bool:
        self.files = {"pool": self.cfg.path(self.cfg.pool["path"])}
        self.model()  # a model path that does not exist stops the run before it starts
        return True

    def run(self) -> None:
        import dataclasses

        from presel.features.extract import embed_pool

        embed_pool(self.ctx.pool(), self.out_dir, dataclasses.replace(self.conf, model=self.model() or self.conf.model))
