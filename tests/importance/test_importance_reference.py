"""Reference set: stratified per task, at least one per task, seeded, distinct images, files select reads."""

import json

import pytest
from imp_data import make_pool

from presel.errors import PreselError
from presel.importance.reference import ReferenceConfig, reference_to_dir, sample_reference, task_quota
from presel.io.manifest import read_id_list, read_pool


def test_quota():
    cfg = ReferenceConfig(fraction=0.05)
    assert [task_quota(n, cfg) for n in (1, 5, 19, 20, 39, 40, 1000)] == [1, 1, 1, 1, 1, 2, 50]
    assert task_quota(0, cfg) == 0
    assert task_quota(3, ReferenceConfig(fraction=1.0)) == 3
    assert task_quota(10, ReferenceConfig(fraction=0.05, min_per_task=0)) == 0
    assert task_quota(2, ReferenceConfig(fraction=0.05, min_per_task=5)) == 2  # capped at the task's size


def test_stratified_seeded_and_distinct(tmp_path):
    pool = read_pool(make_pool(tmp_path, {"vqa": 200, "ocr": 40, "tiny": 3}, shared=30))
    ref = sample_reference(pool, ReferenceConfig(fraction=0.05, seed=0))
    by_task = {}
    for r in ref:
        by_task.setdefault(r.task, []).append(r)
    # protocol paper: 5% of the 243 distinct pool images = 12, split over the tasks in proportion to their
    # distinct images (vqa 200, ocr 40 own + 30 shared = 70, tiny 3: 8.79, 3.08, 0.13 -> 9, 3, 0); tiny gets its minimum 1
    assert {t: len(v) for t, v in by_task.items()} == {"vqa": 9, "ocr": 3, "tiny": 1}
    assert len({r.image_key for r in ref}) == len(ref)  # an image shared by two tasks is never taken twice
    idx = pool.by_id()
    assert [idx[r.id] for r in ref] == sorted(idx[r.id] for r in ref)  # pool order
    again = sample_reference(pool, ReferenceConfig(fraction=0.05, seed=0))
    assert [r.id for r in again] == [r.id for r in ref]
    other = sample_reference(pool, ReferenceConfig(fraction=0.05, seed=1))
    assert [r.id for r in other] != [r.id for r in ref]
    # a task's draw order depends on the seed and its name only: adding a task changes its share, not its draw
    pool2 = read_pool(make_pool(tmp_path / "more", {"vqa": 200, "ocr": 40, "tiny": 3, "zzz": 50}, shared=30))
    ref2 = sample_reference(pool2, ReferenceConfig(fraction=0.05, seed=0))
    a, b = {r.id for r in ref2 if r.task == "vqa"}, {r.id for r in ref if r.task == "vqa"}
    assert a <= b or b <= a


def test_sample_is_random_within_tasks(tmp_path):
    pool = read_pool(make_pool(tmp_path, {"a": 400}))
    picks = [int(r.id.split("-")[1]) for r in sample_reference(pool, ReferenceConfig(fraction=0.1, seed=3))]
    assert len(picks) == 40 and min(picks) < 100 and max(picks) > 300


def test_outputs_deterministic_and_usable(tmp_path):
    pool = read_pool(make_pool(tmp_path, {"vqa": 60, "ocr": 30}))
    s = reference_to_dir(pool, tmp_path / "ref", fraction=0.1, seed=7)
    assert s["tasks"] == {"ocr": {"images": 30, "records": 30, "reference": 3},
                          "vqa": {"images": 60, "records": 60, "reference": 6}}
    assert s["total"] == {"images": 90, "records": 90, "reference": 9, "tasks": 2, "unit": "images"}
    rows = [json.loads(x) for x in (tmp_path / "ref" / "reference.jsonl").read_text().splitlines()]
    assert [set(r) for r in rows] == [{"id", "image", "task"}] * 9
    skel = json.loads((tmp_path / "ref" / "reference_llava.json").read_text())
    assert [{k: v for k, v in r.items() if k != "conversations"} for r in skel] == rows
    assert all(r["conversations"] == [] for r in skel)
    assert read_id_list(tmp_path / "ref" / "reference.jsonl") == [r["id"] for r in rows]
    assert read_pool(tmp_path / "ref" / "reference.jsonl", image_root=tmp_path).records[0].task in {"vqa", "ocr"}
    cfg = json.loads((tmp_path / "ref" / "config.json").read_text())
    assert cfg["stage"] == "reference" and cfg["config"] == {"fraction": 0.1, "seed": 7, "min_per_task": 1,
                                                                "protocol": "paper", "from_file": None}
    reference_to_dir(pool, tmp_path / "ref2", fraction=0.1, seed=7)
    for name in ("reference.jsonl", "reference_llava.json", "summary.json", "config.json"):
        assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / "ref2" / name).read_bytes(), name
    with pytest.raises(PreselError, match="already exists"):
        reference_to_dir(pool, tmp_path / "ref", fraction=0.1, seed=7)
    reference_to_dir(pool, tmp_path / "ref", fraction=0.2, seed=7, overwrite=True)


@pytest.mark.parametrize("kw, msg", [({"fraction": 0}, "fraction=0 must be"), ({"fraction": 1.5}, "fraction=1.5"),
                                     ({"seed": -1}, "seed=-1"), ({"min_per_task": -2}, "min_per_task=-2")])
def test_bad_config(kw, msg):
    with pytest.raises(PreselError, match=msg):
        ReferenceConfig(**kw)


def test_cli(tmp_path, capsys):
    from presel.cli import main

    pool = make_pool(tmp_path, {"vqa": 60, "ocr": 30})
    assert main(["reference", "--pool", str(pool), "--fraction", "0.05", "--seed", "0", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "vqa" in out and "wrote" in out
    assert len((tmp_path / "r" / "reference.jsonl").read_text().splitlines()) == 4  # 3 + 1
    assert main(["reference", "--pool", str(pool), "--fraction", "2", "--out", str(tmp_path / "r2")]) == 2
    assert "fraction=2.0 must be" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()
