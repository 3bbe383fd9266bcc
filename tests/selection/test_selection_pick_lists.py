"""presel select --exclude / --include: id lists (a `presel map` lasso export) that leave images out or force them in."""

import json

import pyarrow.parquet as pq
import pytest
import yaml
from selection_helpers import make_pool

from presel.cli import main


def cli(p, out, *extra):
    budget = [] if "--budget-count" in extra else ["--budget", "0.25"]
    return main(["select", "--pool", str(p["pool"]), "--features", str(p["features"]), "--feature-ids", str(p["ids"]),
                 *budget, "--weights", str(p["weights"]), "--reference", str(p["reference"]), "--out", str(out), *extra])


def _selected(out):
    return {r["id"]: r for r in pq.read_table(out / "selection.parquet").to_pylist()}


def test_exclude_drops_images_before_selecting(tmp_path):
    p = make_pool(tmp_path)
    base = tmp_path / "base"
    assert cli(p, base) == 0
    picked = [i for i, r in _selected(base).items() if r["source"] == "selected"]
    drop = picked[:5] + ["img/c/7.jpg"]  # record ids and an image path, as the map exports them
    (tmp_path / "drop.txt").write_text("\n".join(drop) + "\n\n")
    out = tmp_path / "ex"
    assert cli(p, out, "--exclude", str(tmp_path / "drop.txt")) == 0
    sel = _selected(out)
    assert not set(picked[:5]) & set(sel) and "c7" not in sel
    summary = json.loads((out / "summary.json").read_text())
    # a budget fraction is of the pool that is left (as for rejected images): floor(0.25 * 234); exact again
    assert len(sel) == summary["totals"]["budget"] == 58
    assert cli(p, tmp_path / "ex60", "--exclude", str(tmp_path / "drop.txt"), "--budget-count", "60") == 0
    assert len(_selected(tmp_path / "ex60")) == 60
    assert summary["exclude"] == {"file": str(tmp_path / "drop.txt"), "ids": 6, "images": 6}
    assert summary["totals"]["excluded_images"] == 6 and summary["totals"]["distinct_images"] == 234
    asg = pq.read_table(out / "assignments.parquet").column("id").to_pylist()
    assert not set(drop) & set(asg)
    assert json.loads((out / "config.json").read_text())["config"]["exclude"] == str(tmp_path / "drop.txt")


def test_include_forces_images_in_within_the_budget(tmp_path):
    p = make_pool(tmp_path)
    base = tmp_path / "base"
    assert cli(p, base) == 0
    base_sel = _selected(base)
    asg = pq.read_table(base / "assignments.parquet").to_pylist()
    worst = sorted((r for r in asg if not r["selected"] and not r["reference"]), key=lambda r: -(r["rank"] or 0))
    force = [r["id"] for r in worst[:4]]
    assert not set(force) & set(base_sel)
    (tmp_path / "force.txt").write_text("\n".join(force) + "\n")
    out = tmp_path / "inc"
    assert cli(p, out, "--include", str(tmp_path / "force.txt")) == 0
    sel = _selected(out)
    assert set(force) <= set(sel) and all(sel[i]["source"] == "selected" for i in force)
    summary = json.loads((out / "summary.json").read_text())
    assert len(sel) == summary["totals"]["budget"] == 60  # counted in the budget: 4 others make way
    assert summary["totals"]["included_images"] == 4 and summary["include"]["images"] == 4
    per_task = {t: v.get("included", 0) for t, v in summary["tasks"].items()}
    assert sum(per_task.values()) == 4
    assert sum(v["selected"] for v in summary["tasks"].values()) == summary["totals"]["selected"]
    # the rest of the selection is the base one, minus as many images as were forced in
    assert len(set(sel) & set(base_sel)) == 60 - 4


def test_include_and_exclude_are_deterministic_and_budget_checked(tmp_path, capsys):
    p = make_pool(tmp_path)
    (tmp_path / "force.txt").write_text("".join(f"a{i}\n" for i in range(40, 100)))
    assert cli(p, tmp_path / "o1", "--include", str(tmp_path / "force.txt")) == 2
    err = capsys.readouterr().err
    assert "--include forces 60 in" in err and "raise the budget" in err and not (tmp_path / "o1").exists()
    (tmp_path / "force.txt").write_text("a40\nb41\n")
    assert cli(p, tmp_path / "o2", "--exclude", str(tmp_path / "none.txt")) == 2
    assert f"--exclude {tmp_path / 'none.txt'}: file not found" in capsys.readouterr().err
    (tmp_path / "drop.txt").write_text("c1\n")
    for o in ("o2", "o3"):
        assert cli(p, tmp_path / o, "--include", str(tmp_path / "force.txt"), "--exclude", str(tmp_path / "drop.txt")) == 0
    assert (tmp_path / "o2" / "selection.parquet").read_bytes() == (tmp_path / "o3" / "selection.parquet").read_bytes()


@pytest.mark.parametrize("flag, text, needle", [
    ("--exclude", "a1\nnope-7\n", "line 2: id 'nope-7' is not in the pool"),
    ("--include", "a1\n\nimg/zz/1.jpg\n", "line 3: id 'img/zz/1.jpg' is not in the pool"),
    ("--include", "a1\na2\na1\n", "line 3: id 'a1' is listed twice (first at line 1)"),
    ("--exclude", "a3\n", "line 1: id 'a3' is a reference image"),
    ("--include", "img/b/4.jpg\n", "line 1: id 'img/b/4.jpg' is a reference image"),
])
def test_bad_id_lists_are_located_errors(tmp_path, capsys, flag, text, needle):
    p = make_pool(tmp_path)
    ids = tmp_path / "list.txt"
    ids.write_text(text)
    out = tmp_path / "out"
    assert cli(p, out, flag, str(ids)) == 2
    err = capsys.readouterr().err
    assert f"{ids} {needle}" in err and flag in err, err
    assert not out.exists()


def test_an_image_both_excluded_and_included(tmp_path, capsys):
    p = make_pool(tmp_path)
    (tmp_path / "x.txt").write_text("a10\n")
    (tmp_path / "i.txt").write_text("b2\nimg/a/10.jpg\n")
    assert cli(p, tmp_path / "out", "--exclude", str(tmp_path / "x.txt"), "--include", str(tmp_path / "i.txt")) == 2
    assert f"{tmp_path / 'i.txt'} line 2: id 'img/a/10.jpg' is also excluded ({tmp_path / 'x.txt'} line 1" in \
        capsys.readouterr().err


def test_a_manifest_as_id_list_and_protocol_official(tmp_path, capsys):
    p = make_pool(tmp_path)
    (tmp_path / "drop.jsonl").write_text('{"id": "a5"}\n{"id": "c6"}\n')
    assert cli(p, tmp_path / "out", "--exclude", str(tmp_path / "drop.jsonl")) == 0
    assert not {"a5", "c6"} & set(_selected(tmp_path / "out"))
    (tmp_path / "bad.jsonl").write_text('{"id": "a5"}\n{"image": "x"}\n')
    assert cli(p, tmp_path / "o2", "--exclude", str(tmp_path / "bad.jsonl")) == 2
    assert f"{tmp_path / 'bad.jsonl'} line 2: missing 'id'" in capsys.readouterr().err
    assert cli(p, tmp_path / "o3", "--include", str(tmp_path / "drop.jsonl"), "--protocol", "official") == 2
    assert "include is not part of protocol official" in capsys.readouterr().err


def test_pipeline_reselects_when_an_id_list_changes(tmp_path):
    from presel.pipeline import Pipeline, RunConfig

    make_pool(tmp_path)
    (tmp_path / "drop.txt").write_text("a1\n")
    cfg = {"out": "run", "pool": {"path": "pool.jsonl"},
           "select": {"budget": 0.25, "seed": 0, "features": "feats.npy", "feature_ids": "ids.txt",
                      "reference": "ref.txt", "weights": "weights.json", "exclude": "drop.txt"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    logs: list[str] = []
    Pipeline(RunConfig.load(path), log=logs.append).run()
    summary = json.loads((tmp_path / "run" / "selection" / "summary.json").read_text())
    assert summary["exclude"]["images"] == 1 and summary["exclude"]["file"] == str(tmp_path / "drop.txt")
    logs.clear()
    Pipeline(RunConfig.load(path), log=logs.append).run()
    assert any("up to date" in s for s in logs)
    picked = [i for i, r in _selected(tmp_path / "run" / "selection").items() if r["source"] == "selected"]
    (tmp_path / "drop.txt").write_text(f"a1\n{picked[0]}\n")  # the same file, new content: reselect
    logs.clear()
    Pipeline(RunConfig.load(path), log=logs.append).run()
    assert not any("up to date" in s for s in logs)
    assert picked[0] not in _selected(tmp_path / "run" / "selection")
    cfg["select"]["include"] = "nothere.txt"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(Exception, match="select.include='nothere.txt'"):
        Pipeline(RunConfig.load(path), log=logs.append).run()
