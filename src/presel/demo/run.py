"""``presel demo``: the whole pipeline on the offline demo pool, with real (small) models.

5% reference set -> fine-tune the small real LLaVA (offline DINOv2-S + SmolLM2-135M) on it -> IRS
-> task weights -> offline DINOv2-S features -> select 15% -> oracle instructions -> report.
``--compare`` then runs ``presel compare`` (:mod:`presel.compare`) on the demo run: PreSel, the best
within-task rule with IRS and with size weights, random and TypiClust at 15% (same budget, same reference
set; each over ``--compare-seeds`` seeds) and one model on 100%, scored on the held-out questions by exact
match and answer loss (mean NLL of the answer tokens), mean +- 95% CI over the seeds and paired differences.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml

from presel.io.atomic import atomic_file


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


def compare_config(cfg_dict: dict[str, Any], *, seed: int = 0, seeds: int = 3) -> dict[str, Any]:
    """The demo's ``presel compare`` config (saved as ``compare.yaml`` next to ``config.yaml``): every arm of
    :mod:`presel.compare` on the demo pool, fine-tuned with the reference model's recipe for one epoch; two
    models at a time on a machine with two or more cores (one process each, one thread each)."""
    tune = {k: v for k, v in cfg_dict["ref_model"].items() if k != "model"}
    return {"run": "config.yaml", "heldout": "pool/heldout.json", "full": "pool/annotations.json",
            "out": "compare", "model": cfg_dict["ref_model"]["model"], "budget": cfg_dict["select"]["budget"],
            "seeds": seeds, "first_seed": seed, "finetune": dict(tune, epochs=1, seed=seed),
            "evaluate": {"max_new_tokens": 16}, "jobs": max(1, min(2, os.cpu_count() or 1))}


def compare_models(out: Path, cfg_dict: dict[str, Any], *, seed: int = 0, seeds: int = 3, log=print) -> dict[str, Any]:
    """Write ``compare.yaml`` in the demo run ``out`` and run it (:func:`presel.compare.run_compare`)."""
    from presel.compare import load_compare_config, run_compare

    path = out / "compare.yaml"
    with atomic_file(path) as f:
        f.write(f"# presel demo comparison; rerun with: presel compare {path}\n")
        yaml.safe_dump(compare_config(cfg_dict, seed=seed, seeds=seeds), f, sort_keys=False)
    cc, base = load_compare_config(path)
    return run_compare(cc, base, log=log)
