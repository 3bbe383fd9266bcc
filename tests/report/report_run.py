"""A real tiny run for the report tests: every stage of `presel run` with tiny models, laid out as a user's
run with the config outside the run directory, the manifest apart from its images (`pool.image_root`)
and a task name that matplotlib would read as mathtext."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

DOLLAR_TASK = "ocr $x^{2$ \\frac"  # unbalanced mathtext: matplotlib raises on it unless told to draw plain text


def build_tiny_run(root: Path, tiny_llava: Path, tiny_dinov2: Path, log=None) -> Path:
    """Build the pool under ``root/data``, its manifest in ``root/manifests``, run every stage into
    ``root/run`` from ``root/config.yaml``; return the run directory."""
    from presel.demo.pool import build_demo_pool
    from presel.pipeline import Pipeline, RunConfig

    build_demo_pool(root / "data", size="small")
    man = root / "manifests"
    man.mkdir()
    rows = [json.loads(x) for x in (root / "data" / "pool.jsonl").read_text().splitlines() if x.strip()]
    for r in rows:
        if r["task"] == "ocr":
            r["task"] = DOLLAR_TASK
    (man / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "data" / "pool.jsonl").unlink()  # nothing next to the images: the report must use image_root
    tune = {"model": str(tiny_llava), "lora_r": 4, "lora_alpha": 8, "batch_size": 8, "max_length": 128,
            "save_every_steps": 0, "log_every": 1}
    cfg = {"out": "run", "pool": {"path": "manifests/pool.jsonl", "image_root": "data"},
           "reference": {"fraction": 0.05, "seed": 0},
           "annotate": {"annotations": "data/annotations.json"},
           "ref_model": tune, "score": {"batch_size": 8}, "weights": {"tau": "auto"},
           "embed": {"model": str(tiny_dinov2), "batch_size": 32, "workers": 0},
           "select": {"budget": 0.15, "seed": 0},
           "generate": {"from_annotations": "data/annotations.json"},
           "final_model": dict(tune, max_steps=3),
           "report": {}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    Pipeline(RunConfig.load(root / "config.yaml"), log=log or (lambda s: None)).run()
    return root / "run"
