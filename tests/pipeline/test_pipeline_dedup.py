"""The ``dedup`` stage of ``presel run``: near-copies grouped between embed and select, select drops all but
one per group; the pool section's ``image_column`` names the image field."""

import json

import numpy as np
import pyarrow.parquet as pq
import yaml

from presel.pipeline import STAGES, Pipeline, RunConfig


def _pool(root):
    from PIL import Image

    rows = []
    for i in range(12):
        task = "alpha" if i < 6 else "beta"
        img = f"img/{i}.png"
        (root / "img").mkdir(exist_ok=True)
        a = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(a).save(root / img)
        rows.append({"id": f"r{i}", "picture": img, "task": task})
        if i in (1, 7):  # a near-copy: one pixel changed (different bytes, same picture)
            a[0, 0] = (a[0, 0].astype(int) + 1) % 256
            Image.fromarray(a).save(root / f"img/{i}-copy.png")
            rows.append({"id": f"r{i}-copy", "picture": f"img/{i}-copy.png", "task": task})
    (root / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _run(root, tiny_dinov2, **dedup):
    cfg = {"out": "run", "pool": {"path": "pool.jsonl", "image_column": "picture"},
           "embed": {"model": str(tiny_dinov2), "batch_size": 8, "workers": 0},
           "dedup": {"threshold": 0.999, "threads": 1, **dedup},
           "select": {"budget": 1.0, "seed": 0, "task_weights": "uniform", "images_per_cluster": 4}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    logs: list[str] = []
    Pipeline(RunConfig.load(root / "config.yaml"), log=logs.append).run()
    return {s for s in STAGES if any(f" {s} -> " in x for x in logs)}


def test_dedup_stage_between_embed_and_select(tmp_path, tiny_dinov2):
    assert STAGES.index("embed") < STAGES.index("dedup") < STAGES.index("select")
    _pool(tmp_path)
    assert _run(tmp_path, tiny_dinov2) == {"embed", "dedup", "select"}
    run = tmp_path / "run"
    groups = pq.read_table(run / "dedup" / "groups.parquet").to_pylist()
    grouped = {frozenset(g["key"] for g in groups if g["group"] == n) for n in {g["group"] for g in groups}}
    assert {frozenset({"img/1.png", "img/1-copy.png"}), frozenset({"img/7.png", "img/7-copy.png"})} <= grouped
    summary = json.loads((run / "selection" / "summary.json").read_text())
    assert summary["totals"]["near_duplicate_images_dropped"] == 2
    picked = {r["image"] for r in pq.read_table(run / "selection" / "selection.parquet").to_pylist()}
    assert not {"img/1.png", "img/1-copy.png"} <= picked and not {"img/7.png", "img/7-copy.png"} <= picked
    assert len(picked) == 12
    assert _run(tmp_path, tiny_dinov2, threads=2) == set()  # threads only change the speed
    assert _run(tmp_path, tiny_dinov2, threshold=0.9999) == {"dedup", "select"}
