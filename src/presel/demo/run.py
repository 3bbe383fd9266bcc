"""``presel demo``: the whole pipeline on the offline demo pool, with real (small) models.

5% reference set -> fine-tune the small real LLaVA (offline DINOv2-S + SmolLM2-135M) on it -> IRS
-> task weights -> offline DINOv2-S features -> select 15% -> oracle instructions -> report.
``--compare`` then fine-tunes final models on PreSel's 15%, on a random 15% (same budget, same
reference set) and on 100%, evaluates them on held-out questions and prints the paper-style table.
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
        "embed": {"model": "dinov2-small", "image_size": 112, "batch_size": 32, "workers": 2},
        "select": {"budget": 0.15, "seed": seed},
        "generate": {"from_annotations": "pool/annotations.json"},
        "report": {},
    }


def write_config(path: Path, cfg: dict[str, Any]) -> None:
    with atomic_file(path) as f:
        f.write("# presel demo run; rerun with: presel run " + str(path) + "\n")
        yaml.safe_dump(cfg, f, sort_keys=False)


def run_demo(out: str | Path = "runs/demo", *, size: str = "default", seed: int = 0, compare: bool = False,
             log=print) -> dict[str, Any]:
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
        result["evaluation"] = compare_models(out, cfg_dict, seed=seed, log=log)
    return result


def compare_models(out: Path, cfg_dict: dict[str, Any], *, seed: int = 0, log=print) -> dict[str, Any]:
    """Final models on PreSel 15%, random 15% (same reference set) and 100%; per-task accuracy on held-out."""
    from presel.evaluate import EvalConfig, evaluate_model, relative_table
    from presel.finetune.train import FinetuneConfig, finetune
    from presel.pipeline import Pipeline, RunConfig

    tune = dict(cfg_dict["ref_model"], epochs=1)
    base = tune.pop("model")
    cmp_dir = out / "compare"
    cmp_dir.mkdir(exist_ok=True)
    # random 15%: same features, reference set and reference annotations, uniform within task quotas
    rnd = {"out": "random", "pool": {"path": "../pool/pool.jsonl"},
           "annotate": {"annotated": "../reference_annotated/train.json"},
           "select": {"budget": 0.15, "seed": seed, "method": "random", "task_weights": "size",
                      "features": "../features", "reference": "../reference/reference.jsonl"},
           "generate": {"from_annotations": "../pool/annotations.json"}}
    write_config(cmp_dir / "random.yaml", rnd)
    Pipeline(RunConfig.load(cmp_dir / "random.yaml"), log=log).run()
    train_sets = {"presel": out / "generate" / "train.json", "random": cmp_dir / "random" / "generate" / "train.json",
                  "full": out / "pool" / "annotations.json"}
    results: dict[str, Any] = {}
    for name, data in train_sets.items():
        model_dir = cmp_dir / "models" / name
        if not (model_dir / "config.json").exists():
            log(f"compare: fine-tuning on {name} ({data})")
            finetune(data, base, model_dir, FinetuneConfig(**tune), image_root=out / "pool")
        log(f"compare: evaluating {name}")
        results[name] = evaluate_model(model_dir, out / "pool" / "heldout.json", EvalConfig(batch_size=16))
    table = relative_table(results, reference="full")
    log(table)
    write_json(out / "evaluation.json", {n: {k: v for k, v in r.items() if k != "predictions"}
                                         for n, r in results.items()})
    (cmp_dir / "table.txt").write_text(table + "\n")
    return json.loads((out / "evaluation.json").read_text())
