"""``reference``: a seeded per-task sample of the pool to annotate (the reference set)."""

from __future__ import annotations

from presel.importance.reference import ReferenceConfig
from presel.pipeline.base import Estimate, Sizes, Stage, require_path


class Reference(Stage):
    name = "reference"
    config = ReferenceConfig
    outputs = {"reference": "reference.jsonl"}
    paths = ("from_file",)

    def estimate(self, sizes: Sizes) -> Estimate:
        return Estimate(f"{sizes.reference:,} images to annotate ({float(self.section.get('fraction', 0.05)):.0%} per "
                        "task, at least 1)")

    def wire(self) -> bool:
        self.files = {"pool": self.cfg.path(self.cfg.pool["path"])}
        if self.section.get("from_file"):
            self.files["from_file"] = require_path(self.cfg, self.name, "from_file", self.section["from_file"])
        return True

    def run(self) -> None:
        from presel.importance.reference import reference_to_dir

        rc = self.conf
        reference_to_dir(self.ctx.pool(), self.out_dir, fraction=rc.fraction, seed=rc.seed,
                         min_per_task=rc.min_per_task, overwrite=True, protocol=rc.protocol,
                         from_file=self.files.get("from_file"))
