"""``dedup``: groups of near-duplicate images from the features, and a keep-list ``select`` uses."""

from __future__ import annotations

from presel.pipeline.base import Stage
from presel.selection.neardup import DedupConfig


class Dedup(Stage):
    name = "dedup"
    config = DedupConfig
    needs = ("embed",)
    outputs = {"dedup": ""}

    def wire(self) -> bool:
        self.need("features", "needs features: add an 'embed' section")
        return True

    def run(self) -> None:
        from presel.io.features import load_features
        from presel.selection.neardup import dedup_to_dir

        # with the pool: groups kept in pool order, byte-identical images one image (as select counts them)
        dedup_to_dir(load_features(self.ctx.outputs["features"], None), self.out_dir, self.conf, pool=self.ctx.pool(),
                     overwrite=True)
