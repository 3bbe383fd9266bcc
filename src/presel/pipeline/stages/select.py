"""``select``: the PreSel selection (or a baseline) within the budget, reference set included."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from presel.errors import PreselError
from presel.pipeline.base import Estimate, Sizes, Stage
from presel.selection.select import SelectConfig


class Select(Stage):
    name = "select"
    config = SelectConfig
    # inputs given as files when their stage is not in the run
    extra = ("features", "feature_ids", "weights", "reference")
    paths = (*extra, "exclude", "include")  # exclude / include: SelectConfig fields naming id lists
    needs = ("reference", "weights", "embed", "dedup")
    outputs = {"selection": "selection.parquet"}

    def estimate(self, sizes: Sizes) -> Estimate:
        return Estimate(f"budget {sizes.budget:,} {sizes.unit} = {sizes.reference:,} reference + {sizes.new:,} new "
                        "(CPU, minutes)")

    def settings(self) -> dict[str, Any]:  # the input files are in the key as files
        return {k: v for k, v in super().settings().items() if k not in self.extra}

    def legacy_settings(self) -> dict[str, Any]:
        return {k: v for k, v in self.section.items() if k not in self.extra}

    def validate(self) -> None:
        super().validate()
        n = self.conf.budget_count
        if n is not None:  # before reference and embed run (and in --dry-run): a budget the pool cannot fill
            pool = self.ctx.pool()
            have = len(pool.distinct_images())
            if n > have:
                raise PreselError(f"{self.cfg.source}: select.budget_count={n} is larger than the pool ({have} distinct "
                                  f"images in {pool.source}); lower it, or give budget: FRACTION (e.g. 0.15)")

    def wire(self) -> bool:
        out, sec = self.ctx.outputs, self.section
        features = out.get("features") or self.cfg.path(sec.get("features"))
        if features is None:
            raise PreselError(f"{self.cfg.source}: 'select' needs features: add an 'embed' section or select.features")
        ref = out.get("reference") or self.cfg.path(sec.get("reference"))
        weights = out.get("weights") or self.cfg.path(sec.get("weights"))
        if weights is None and sec.get("task_weights", "irs") == "irs":
            raise PreselError(f"{self.cfg.source}: select.task_weights is 'irs' but there are no task weights: add "
                              "'score' and 'weights' sections, give select.weights, or set task_weights: uniform|size")
        self.inputs = {"features": features, "ids": self.cfg.path(sec.get("feature_ids")), "weights": weights,
                       "reference": ref, "dedup": out.get("dedup")}
        self.files = {"weights": weights, "reference": ref, "features_ids": self.inputs["ids"],
                      **{k: self.cfg.path(sec[k]) for k in ("exclude", "include") if sec.get(k)},
                      **({} if "embed" in self.ctx.planned else {"features": features})}
        return True

    def run(self) -> None:
        from presel.io.features import load_features
        from presel.selection.select import select_to_dir

        i = self.inputs
        conf = replace(self.conf, **{k: str(self.files[k]) for k in ("exclude", "include") if k in self.files})
        select_to_dir(self.ctx.pool(), load_features(i["features"], i["ids"]), i["weights"], i["reference"],
                      conf, self.out_dir, overwrite=True, dedup=i["dedup"])
