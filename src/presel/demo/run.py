"""``presel demo``: the whole pipeline on the offline demo pool, with real (small) models.

5% reference set -> fine-tune the small real LLaVA (offline DINOv2-S + SmolLM2-135M) on it -> IRS
-> task weights -> offline DINOv2-S features -> select 15% -> oracle instructions -> report.
``--compare`` then fine-tunes final models on PreSel's 15%, on PreSel's 15% with size-proportional task
weights, on a random 15% (same budget, same reference set; each over ``--compare-seeds`` seeds) and
one on 100%, scores them on the held-out questions by exact match and answer loss (mean NLL of the
answer tokens) and prints mean +- 95% CI over the seeds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from presel.io.atomic import atomic_file, write_json


def demo_config(*, seed: int = 0) -> dict[str, Any]:
    """The demo's run config (paths relative to the run directory, where it is saved as config.yaml)."""
    tune = {"model": "llava-small", "lora_r": 16, "lora_alpha": 32, "lr": 1e-3, "projector_lr": 1e-3,
            "batch_size": 8, "max_length": 160, "seed": seed, "save_every_steps": 20, "log_every": 5}
    return {
        "out": ".",
        "pool": {"path": "pool/pool.jsonl"},
        "reference": {"fraction": 0.05, "seed": seed},
        "annotate": {"annotations": "pool/annotations.json"},
        "ref_model": dict(tune, epochs=1),
        "score": {"batch_size": 16},
        "weights": {"tau": "auto"},
        "embed": {"model": "dinov2-small", "image_size": 112, "batch_size": 32, "num_workers": 2},
        "select": {"budget": 0.15, "seed": seed},
        "generate": {"from_annotations": "pool/annotations.json"},
        "report": {},
    }


def write_config(path: Path, cfg: dict[str, Any]) -> None:
    with atomic_file(path) as f:
        f.write("# presel demo run; rerun with: presel run " + str(path) + "\n")
        yaml.safe_dump(cfg, f, sort_keys=False)


def run_demo(out: str | Path = "runs/demo", *, size: str = "default", seed: int = 0, compare: bool = False,
             compare_seeds: int = 3, log=print) -> dict[str, Any]:
    from presel.demo.pool import build_demo_pool
    from presel.pipeline import Pipeline, RunConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log(f"demo: building the offline pool in {out / 'pool'} ...")
    info = build_demo_pool(out / "pool", seed=seed, size=size)
    log(f"demo: {info['totals']['records']} records, {info['totals']['images']} images, {info['totals']['tasks']} tasks")
    cfg_dict = demo_config(seed=seed)
    write_config(out / "config.yaml", cfg_dict)
    cfg = RunConfig.load(out / "config.yaml")
    Pipeline(cfg, log=log).run()
    result: dict[str, Any] = {"run": str(out), "report": str(cfg.stage_dir("report") / "report.html"),
                              "seconds": round(time.perf_counter() - t0, 1)}
    if compare:
        result["evaluation"] = compare_models(out, cfg_dict, seed=seed, seeds=compare_seeds, log=log)
    return result


# arms of ``--compare``: select settings at the same budget and reference set (full data is one shared model)
COMPARE_ARMS: dict[str, dict[str, str]] = {
    "presel": {"method": "presel", "task_weights": "irs"},
    "presel-size": {"method": "presel", "task_weights": "size"},  # IRS vs size weights, same within-task rule
    "random": {"method": "random", "task_weights": "size"},
}


def compare_models(out: Path, cfg_dict: dict[str, Any], *, seed: int = 0, seeds: int = 3, budget: float = 0.15,
                   arms: dict[str, dict[str, str]] | None = None, eval_config: Any = None, log=print) -> dict[str, Any]:
    """Final models on each arm's selection (``seeds`` seeds each: selection and fine-tuning seed) and one on
    100%; each scored on the held-out questions by exact match and answer loss (mean NLL of the answer tokens).

    Writes ``compare/<arm>-s<seed>/`` (selection runs), ``compare/models/<name>/``, ``evaluation.json``
    (per model, plus the table's cells) and ``compare/table.txt``. Finished models are reused on a rerun.
    """
    from presel.evaluate import EvalConfig, evaluate_model
    from presel.finetune.train import FinetuneConfig, finetune
    from presel.pipeline import Pipeline, RunConfig

    arms = COMPARE_ARMS if arms is None else arms
    tune = dict(cfg_dict["ref_model"], epochs=1)
    base = tune.pop("model")
    cmp_dir = out / "compare"
    cmp_dir.mkdir(exist_ok=True)
    seed_list = [seed + i for i in range(int(seeds))]
    runs: dict[str, tuple[Path, int]] = {}
    for arm, sel in arms.items():
        for s in seed_list:
            name = f"{arm}-s{s}"
            select_cfg: dict[str, Any] = {"budget": budget, "seed": s, **sel, "features": "../features",
                                          "reference": "../reference/reference.jsonl"}
            if sel.get("task_weights", "irs") == "irs":
                select_cfg["weights"] = "../weights/task_weights.json"
            write_config(cmp_dir / f"{name}.yaml", {
                "out": name, "pool": {"path": "../pool/pool.jsonl"},
                "annotate": {"annotated": "../reference_annotated/train.json"},
                "select": select_cfg, "generate": {"from_annotations": "../pool/annotations.json"}})
            log(f"compare: selecting {name}")
            Pipeline(RunConfig.load(cmp_dir / f"{name}.yaml"), log=log).run()
            runs[name] = (cmp_dir / name / "generate" / "train.json", s)
    runs["full"] = (out / "pool" / "annotations.json", seed)
    results: dict[str, Any] = {}
    for name, (data, s) in runs.items():
        model_dir = cmp_dir / "models" / name
        if not (model_dir / "config.json").exists():
            log(f"compare: fine-tuning on {name} ({data})")
            finetune(data, base, model_dir, FinetuneConfig(**dict(tune, seed=s)), image_root=out / "pool")
        log(f"compare: evaluating {name}")
        results[name] = evaluate_model(model_dir, out / "pool" / "heldout.json",
                                       eval_config or EvalConfig(batch_size=16), progress=False)
    cells = compare_cells(results, list(arms), seed_list)
    table = compare_table(cells)
    log(table)
    write_json(out / "evaluation.json", {"models": {n: {k: v for k, v in r.items() if k != "predictions"}
                                                    for n, r in results.items()},
                                         "arms": {a: dict(v) for a, v in arms.items()}, "seeds": seed_list,
                                         "budget": budget, "cells": cells})
    (cmp_dir / "table.txt").write_text(table + "\n")
    return json.loads((out / "evaluation.json").read_text())


def _ci(values: list[float]) -> dict[str, float]:
    from presel.bench.quality import t_interval

    m, lo, hi = t_interval(values)
    return {"mean": m, "ci_low": lo, "ci_high": hi, "n": len(values)}


def compare_cells(results: dict[str, Any], arms: list[str], seeds: list[int]) -> dict[str, Any]:
    """Mean and 95% t-interval over seeds of each arm's exact match and answer NLL per task and overall,
    the full-data model's figures, and paired (same seed) differences of ``presel`` against the other arms."""
    tasks = sorted({t for r in results.values() for t in r["per_task"]})
    metrics = ("accuracy", "answer_nll")

    def val(r: dict[str, Any], task: str, metric: str) -> float | None:
        if task == "mean":
            return r.get("mean_accuracy" if metric == "accuracy" else "mean_answer_nll")
        return r["per_task"].get(task, {}).get(metric)

    cells: dict[str, Any] = {"tasks": tasks + ["mean"], "arms": {}, "full": {}, "paired": {}}
    for arm in arms:
        cells["arms"][arm] = {}
        for t in tasks + ["mean"]:
            cells["arms"][arm][t] = {}
            for m in metrics:
                v = [val(results[f"{arm}-s{s}"], t, m) for s in seeds]
                if all(x is not None for x in v):
                    cells["arms"][arm][t][m] = _ci([float(x) for x in v])
    if "full" in results:
        cells["full"] = {t: {m: val(results["full"], t, m) for m in metrics} for t in tasks + ["mean"]}
    if "presel" in arms:
        for other in (a for a in arms if a != "presel"):
            cells["paired"][f"presel - {other}"] = {}
            for m in metrics:
                d = [val(results[f"presel-s{s}"], "mean", m) - val(results[f"{other}-s{s}"], "mean", m)
                     for s in seeds if val(results[f"presel-s{s}"], "mean", m) is not None
                     and val(results[f"{other}-s{s}"], "mean", m) is not None]
                if d:
                    cells["paired"][f"presel - {other}"][m] = _ci(d)
    return cells


def compare_table(cells: dict[str, Any]) -> str:
    """Text table: per task, each arm's exact match (%) and answer NLL as mean +- 95% CI half-width."""
    arms = list(cells["arms"])

    def fmt(c: dict[str, float] | None, scale: float, digits: int) -> str:
        if not c:
            return "n/a"
        return f"{scale * c['mean']:.{digits}f} +-{scale * (c['ci_high'] - c['mean']):.{digits}f}"

    lines = []
    for metric, title, scale, digits in (("accuracy", "exact match (%)", 100.0, 1),
                                         ("answer_nll", "answer NLL (lower is better)", 1.0, 3)):
        head = ["task"] + arms + (["full"] if cells["full"] else [])
        rows = [head]
        for t in cells["tasks"]:
            row = [t] + [fmt(cells["arms"][a].get(t, {}).get(metric), scale, digits) for a in arms]
            if cells["full"]:
                v = cells["full"][t][metric]
                row.append("n/a" if v is None else f"{scale * v:.{digits}f}")
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines.append(f"{title}, mean +- 95% CI over seeds")
        lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
        lines.append("")
    for name, by_metric in cells["paired"].items():
        for metric, c in by_metric.items():
            scale, digits = (100.0, 1) if metric == "accuracy" else (1.0, 3)
            lines.append(f"{name} (paired by seed), mean over tasks of {metric}: {fmt(c, scale, digits)}")
    return "\n".join(lines).rstrip()
