import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from selection_helpers import make_pool

from presel.cli import main


def cli(p, out, *extra, budget=("--budget", "0.25"), weights=True, reference=True):
    argv = ["select", "--pool", str(p["pool"]), "--features", str(p["features"]), "--feature-ids", str(p["ids"]),
            *budget, "--out", str(out)]
    if weights:
        argv += ["--weights", str(p["weights"])]
    if reference:
        argv += ["--reference", str(p["reference"])]
    return main(argv + list(extra))


def test_cli_end_to_end(tmp_path, capsys):
    p = make_pool(tmp_path, shared=10, extra_records=[{"id": "t1", "conversations": []}])
    out = tmp_path / "runs" / "sel"
    assert cli(p, out, "--seed", "1") == 0
    printed = capsys.readouterr().out
    assert "task" in printed and "selected" in printed and "total" in printed
    summary = json.loads((out / "summary.json").read_text())
    tot = summary["totals"]
    assert tot["distinct_images"] == 240 and tot["records"] == 250 and tot["text_only_records"] == 1
    assert tot["budget"] == 60 and tot["reference"] == 2 and tot["selected"] == 58
    sel = pq.read_table(out / "selection.parquet").to_pylist()
    assert len(sel) == 60 and len({r["image"] for r in sel}) == 60
    assert sum(r["source"] == "reference" for r in sel) == 2
    asg = pq.read_table(out / "assignments.parquet")
    # reference image a3 is also used by task b: it is a reference item in both tasks
    assert asg.num_rows == 250 and asg.column("reference").to_pylist().count(True) == 3
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["seed"] == 1 and cfg["inputs"]["weights"] == str(p["weights"])
    # --out exists now: refused without --overwrite, replaced with it
    assert cli(p, out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli(p, out, "--overwrite", "--method", "random", "--task-weights", "size") == 0
    assert json.loads((out / "summary.json").read_text())["method"] == "random"


def _bad(tmp_path, capsys, *extra, expect, **kw):
    out = tmp_path / "out"
    p = kw.pop("p")
    assert cli(p, out, *extra, **kw) == 2
    err = capsys.readouterr().err
    for e in expect:
        assert e in err, (e, err)
    assert not out.exists()
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".out")]
    return err


def test_malformed_manifest_line(tmp_path, capsys):
    p = make_pool(tmp_path)
    lines = p["pool"].read_text().splitlines()
    lines[2] = '{"id": "a2", "image": '
    p["pool"].write_text("\n".join(lines) + "\n")
    _bad(tmp_path, capsys, p=p, expect=["pool.jsonl line 3", "not valid JSON"])


def test_duplicate_pool_id(tmp_path, capsys):
    p = make_pool(tmp_path, extra_records=[{"id": "a7", "image": "img/x.jpg", "task": "a"}])
    _bad(tmp_path, capsys, p=p, expect=["duplicate id 'a7'"])


def test_pool_id_missing_from_features(tmp_path, capsys):
    p = make_pool(tmp_path, extra_records=[{"id": "z9", "image": "img/z9.jpg", "task": "a"}])
    _bad(tmp_path, capsys, p=p, expect=["feats.npy", "no features for 1 pool image", "'z9'", "presel embed"])


def test_duplicate_feature_id(tmp_path, capsys):
    p = make_pool(tmp_path)
    ids = p["ids"].read_text().splitlines()
    ids[1] = ids[0]
    p["ids"].write_text("\n".join(ids) + "\n")
    _bad(tmp_path, capsys, p=p, expect=["duplicate feature id 'a0'"])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features(tmp_path, capsys, bad):
    p = make_pool(tmp_path)
    f = np.load(p["features"])
    f[130, 3] = bad  # record b10
    np.save(p["features"], f)
    _bad(tmp_path, capsys, p=p, expect=["feats.npy", "'b10'", "NaN or inf"])


def test_dimension_mismatch(tmp_path, capsys):
    p = make_pool(tmp_path)
    p["ids"].write_text("\n".join(p["ids"].read_text().splitlines()[:-1]) + "\n")
    _bad(tmp_path, capsys, p=p, expect=["ids.txt", "239 ids", "240 rows"])
    np.save(p["features"], np.zeros(240, dtype=np.float32))
    _bad(tmp_path, capsys, p=p, expect=["feats.npy", "2-D"])


def test_budget_not_larger_than_reference(tmp_path, capsys):
    p = make_pool(tmp_path)
    _bad(tmp_path, capsys, "--budget-count", "2", p=p, budget=(),
         expect=["budget_count=2", "not larger than the reference set", "ref.txt"])


def test_budget_larger_than_pool(tmp_path, capsys):
    p = make_pool(tmp_path)
    _bad(tmp_path, capsys, "--budget-count", "241", p=p, budget=(), expect=["241", "only 240 distinct images"])
    _bad(tmp_path, capsys, p=p, budget=("--budget", "1.5"), expect=["budget=1.5"])


def test_weights_missing_task(tmp_path, capsys):
    p = make_pool(tmp_path)
    w = json.loads(p["weights"].read_text())
    del w["b"]
    p["weights"].write_text(json.dumps(w))
    _bad(tmp_path, capsys, p=p, expect=["weights.json", "no weight for pool task 'b'"])


@pytest.mark.parametrize("value", ["-0.5", "NaN", "Infinity", '"high"'])
def test_weights_bad_values(tmp_path, capsys, value):
    p = make_pool(tmp_path)
    p["weights"].write_text('{"a": 0.5, "b": ' + value + ', "c": 0.2}')
    _bad(tmp_path, capsys, p=p, expect=["weights.json", "task 'b'"])


def test_weights_all_zero_and_unknown_task(tmp_path, capsys):
    p = make_pool(tmp_path)
    p["weights"].write_text('{"a": 0, "b": 0, "c": 0}')
    _bad(tmp_path, capsys, p=p, expect=["weights.json", "all task weights are 0"])
    p["weights"].write_text('{"a": 1, "b": 1, "c": 1, "gqa": 1}')
    _bad(tmp_path, capsys, p=p, expect=["weights.json", "unknown task 'gqa'"])
    _bad(tmp_path, capsys, p=p, weights=False, expect=["--weights", "--task-weights"])


def test_reference_errors(tmp_path, capsys):
    p = make_pool(tmp_path, ref=("a1", "nope7"))
    _bad(tmp_path, capsys, p=p, expect=["ref.txt", "reference id 'nope7' is not in the pool"])
    p["reference"].write_text("a1\nb2\na1\n")
    _bad(tmp_path, capsys, p=p, expect=["ref.txt", "duplicate reference id 'a1'"])


def test_bad_flag_values(tmp_path, capsys):
    p = make_pool(tmp_path)
    _bad(tmp_path, capsys, "--images-per-cluster", "0", p=p, expect=["images_per_cluster=0"])
    _bad(tmp_path, capsys, "--k", "0", p=p, expect=["k=0"])


def test_cli_presel_cover_method(tmp_path):
    p = make_pool(tmp_path)
    assert cli(p, tmp_path / "cover", "--method", "presel-cover", "--seed", "2") == 0
    assert cli(p, tmp_path / "paper", "--seed", "2") == 0
    cover = json.loads((tmp_path / "cover" / "summary.json").read_text())
    paper = json.loads((tmp_path / "paper" / "summary.json").read_text())
    assert cover["method"] == "presel-cover" and cover["totals"]["total"] == cover["totals"]["budget"] == 60
    assert {t: v["quota"] for t, v in cover["tasks"].items()} == {t: v["quota"] for t, v in paper["tasks"].items()}
    cfg = json.loads((tmp_path / "cover" / "config.json").read_text())
    assert cfg["config"]["method"] == "presel-cover"
