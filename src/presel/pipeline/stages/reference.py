"""``reference``: a seeded per-task sample of the pool to annotate (the reference set)."""

from __future__ import annotations

from presel.importance.reference import ReferenceConfig
from presel.pipeline.base import Stage


class Reference(Stage):
    name = "reference"
    config = ReferenceConfig
    outputs = {"reference": "reference.jsonl"}

    def wire(self) -> bool:
        self.files = {"pool": self.cfg.path(self.cfg.pool["path"])}
        return True

    def run(self) -> None:
        from presel.importance.reference import reference_to_dir

        rc = self.conf
        reference_to_dir(self.ctx.pool(), self.out_dir, fraction=rc.fraction, seed=rc.seed,
                         min_per_task=rc.min_per_task, overwrite=True, protocol=rc.protocol)
