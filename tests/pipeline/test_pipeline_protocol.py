"""A top-level ``protocol:`` in a run config reaches every stage that has one."""

import json

import numpy as np
import pytest
import yaml

from presel.errors import PreselError
from presel.pipeline import Pipeline, RunConfig


def _base():
    return {"out": "run", "pool": {"path": "pool.jsonl"}, "reference": {"fraction": 0.05},
            "score": {"model": "m"}, "weights": {}, "embed": {"model": "e"}, "select": {"budget": 0.15},
            "generate": {"from_annotations": "a.json"}, "final_model": {"model": "m"}}


def test_protocol_goes_to_the_stages_that_have_one():
    cfg = RunConfig.from_dict({**_base(), "protocol": "official"})
    assert cfg.protocol == "official"
    for s in ("reference", "score", "select", "generate", "final_model"):
        assert cfg.sections[s]["protocol"] == "official", s
    for s in ("weights", "embed"):
        assert "protocol" not in cfg.sections[s], s
    # a stage's own setting wins
    base = _base()
    base["select"] = {"budget": 0.15, "protocol": "paper"}
    assert RunConfig.from_dict({**base, "protocol": "official"}).sections["select"]["protocol"] == "paper"
    # absent: the stages keep their settings (and their cache keys) unchanged
    cfg = RunConfig.from_dict(_base())
    assert cfg.protocol == "paper" and "protocol" not in cfg.sections["select"]


def test_bad_protocol():
    with pytest.raises(PreselError, match="protocol='authors' must be one of paper, official"):
        RunConfig.from_dict({**_base(), "protocol": "authors"})


def _pool(root, seed=0):
    """Three tasks; task 'aok' has 3 records per image; 'vqa' reuses images of 'conv'."""
    rng = np.random.default_rng(seed)
    recs = [{"id": f"conv-{i}", "image": f"coco/{i}.jpg", "task": "conv"} for i in range(120)]
    recs += [{"id": f"vqa-{i}", "image": f"coco/{i}.jpg", "task": "vqa"} for i in range(80)]
    recs += [{"id": f"aok-{i}-{j}", "image": f"aok/{i}.jpg", "task": "aok"} for i in range(40) for j in range(3)]
    for r in recs:
        r["conversations"] = [{"from": "human", "value": f"<image>\nq {r['id']}"}, {"from": "gpt", "value": "a"}]
    (root / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (root / "anns.json").write_text(json.dumps(recs))
    images = sorted({r["image"] for r in recs})
    np.save(root / "feats.npy", (rng.standard_normal((len(images), 8)) + np.arange(len(images))[:, None] % 4)
            .astype(np.float32))
    (root / "ids.txt").write_text("\n".join(images) + "\n")
    return recs


def test_official_run_end_to_end(tmp_path):
    recs = _pool(tmp_path)
    cfg = {"out": "run", "protocol": "official", "pool": {"path": "pool.jsonl"},
           "reference": {"fraction": 0.05, "seed": 0},
           "select": {"budget": 0.15, "task_weights": "size", "features": "feats.npy", "feature_ids": "ids.txt"},
           "generate": {"from_annotations": "anns.json"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    Pipeline(RunConfig.load(tmp_path / "c.yaml"), log=lambda s: None).run()
    run = tmp_path / "run"
    ref = json.loads((run / "reference" / "summary.json").read_text())
    assert ref["protocol"] == "official"
    assert {t: v["reference"] for t, v in ref["tasks"].items()} == {"aok": 6, "conv": 6, "vqa": 4}  # 5% of records
    sel = json.loads((run / "selection" / "summary.json").read_text())
    R = len(recs)
    assert sel["protocol"] == "official" and sel["totals"]["new_budget"] == 2 * int(R * 5 / 100)
    assert sel["totals"]["selected"] == 2 * int(R * 5 / 100)
    train = json.loads((run / "generate" / "train.json").read_text())
    rows = [json.loads(x) for x in (run / "selection" / "selection.jsonl").read_text().splitlines()]
    # exactly the reference records plus the picked records (the authors' extract_and_add_samples)
    assert sorted(r["id"] for r in train) == sorted(r["id"] for r in rows)
    assert len(train) == ref["total"]["reference"] + 2 * int(R * 5 / 100)


def test_dry_run_counts_records_under_official(tmp_path):
    from presel.estimate import dry_run

    recs = _pool(tmp_path)
    cfg = {"out": "run", "protocol": "official", "pool": {"path": "pool.jsonl"}, "reference": {"fraction": 0.05},
           "select": {"budget": 0.15, "task_weights": "size", "features": "feats.npy", "feature_ids": "ids.txt"}}
    text = dry_run(RunConfig.from_dict(cfg, base_dir=tmp_path))
    n_new = 2 * int(len(recs) * 5 / 100)
    assert f"budget {16 + n_new:,} records = 16 reference + {n_new:,} new" in text
