"""No command deletes or overwrites what it reads in the same call (presel.io.guard), and `presel run` keeps the
files a user added to a finished stage folder."""

import json

import numpy as np
import pytest
import yaml

from presel.cli import main
from presel.errors import PreselError
from presel.io.guard import check_apart
from presel.pipeline import MARKER, Pipeline, RunConfig


def _store(tmp_path, name="feats"):
    d = tmp_path / name
    d.mkdir()
    (d / "identity.json").write_text(json.dumps({"format": "presel-feature-store"}))
    (d / "shard-0.npy").write_bytes(b"data")
    (tmp_path / "pool.jsonl").write_text('{"id": "a", "image": "a.png", "task": "t"}\n')
    return d


def _intact(d):
    assert (d / "identity.json").is_file() and (d / "shard-0.npy").read_bytes() == b"data"


@pytest.mark.parametrize("out", ["feats", "feats/sub", "."])
def test_select_out_overlapping_features(tmp_path, capsys, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    feats = _store(tmp_path)
    rc = main(["select", "--pool", "pool.jsonl", "--features", "feats", "--out", out, "--overwrite",
               "--budget-count", "1", "--task-weights", "uniform"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--out {out}" in err and ("--features feats" in err or out == ".") and "nothing was changed" in err
    _intact(feats)


def test_dedup_same_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    feats = _store(tmp_path)
    assert main(["dedup", "--features", "feats", "--out", "feats", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "--out feats is the --features feats" in err
    _intact(feats)


def test_reference_file_inside_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _store(tmp_path)
    prev = tmp_path / "prev"
    prev.mkdir()
    (prev / "config.json").write_text(json.dumps({"stage": "select", "environment": {}}))
    (prev / "selection.jsonl").write_text('{"id": "a"}\n')
    rc = main(["select", "--pool", "pool.jsonl", "--features", "feats", "--reference", "prev/selection.jsonl",
               "--out", "prev", "--overwrite", "--budget-count", "1", "--task-weights", "uniform"])
    err = capsys.readouterr().err
    assert rc == 2 and "--out prev contains the input --reference prev/selection.jsonl" in err
    assert (prev / "selection.jsonl").read_text() == '{"id": "a"}\n'


def test_symlink_to_an_input_is_the_input(tmp_path, capsys):
    feats = _store(tmp_path)
    (tmp_path / "link").symlink_to(feats)
    assert main(["dedup", "--features", str(feats), "--out", str(tmp_path / "link"), "--overwrite"]) == 2
    assert "is the --features" in capsys.readouterr().err
    _intact(feats)


@pytest.mark.parametrize("argv", [
    ["embed", "--pool", "{d}/pool.jsonl", "--out", "{d}", "--overwrite"],
    ["reference", "--pool", "{d}/pool.jsonl", "--out", "{d}", "--overwrite"],
    ["weights", "--irs", "{d}/irs.parquet", "--out", "{d}/irs.parquet"],
    ["generate", "--selection", "{d}/pool.jsonl", "--out", "{d}", "--mode", "batch-file"],
    ["report", "{d}", "--out", "{d}/.."],
    ["evaluate", "--model", "tiny-llava", "--data", "{d}/pool.jsonl", "--out", "{d}/pool.jsonl"],
])
def test_every_command_with_out(tmp_path, capsys, argv):
    d = tmp_path / "data"
    d.mkdir()
    (d / "pool.jsonl").write_text('{"id": "a", "image": "a.png", "task": "t"}\n')
    (d / "irs.parquet").write_bytes(b"x")
    assert main([a.format(d=d) for a in argv]) == 2
    assert "presel would delete or overwrite what it reads" in capsys.readouterr().err
    assert (d / "pool.jsonl").is_file() and (d / "irs.parquet").read_bytes() == b"x"


def test_apart_allows_writing_inside_an_image_root_and_beside_inputs(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "pool.jsonl").write_text("")
    check_apart({"--out": tmp_path / "images" / "feats"}, {"--image-root": tmp_path / "images"},
                {"--image-root": "root"})
    check_apart({"--out": tmp_path / "sel"}, {"--pool": tmp_path / "pool.jsonl", "--model": "tiny-llava"})
    with pytest.raises(PreselError, match="contains the input --image-root"):
        check_apart({"--out": tmp_path}, {"--image-root": tmp_path / "images"}, {"--image-root": "root"})


# ---- presel run -------------------------------------------------------------------------------------------------

def _pool(tmp_path, n=30, d=8):
    rng = np.random.default_rng(0)
    rows, feats = [], []
    for task in ["alpha", "beta"]:
        c = rng.normal(size=d) * 3
        for i in range(n):
            rows.append({"id": f"{task}-{i}", "image": f"img/{task}/{i}.png", "task": task})
            feats.append(c + rng.normal(size=d))
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    np.save(tmp_path / "feats.npy", np.asarray(feats, dtype=np.float32))
    (tmp_path / "ids.txt").write_text("".join(r["id"] + "\n" for r in rows))
    (tmp_path / "ref.txt").write_text("alpha-0\nbeta-0\n")


def _config(tmp_path, **select):
    cfg = {"out": "run", "pool": {"path": "pool.jsonl"},
           "select": {"budget": 0.2, "seed": 0, "task_weights": "uniform", "images_per_cluster": 10,
                      "features": "feats.npy", "feature_ids": "ids.txt", "reference": "ref.txt", **select}}
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_run_moves_user_files_out_of_a_rerunning_stage(tmp_path, capsys):
    _pool(tmp_path)
    cfg = _config(tmp_path)
    Pipeline(RunConfig.load(cfg), log=lambda s: None).run()
    sel = tmp_path / "run" / "selection"
    (sel / "notes.txt").write_text("my notes")
    (sel / "mine").mkdir()
    (sel / "mine" / "plot.png").write_bytes(b"png")
    _config(tmp_path, seed=1)
    Pipeline(RunConfig.load(cfg), log=lambda s: None).run()
    err = capsys.readouterr().err
    kept = tmp_path / "run" / "selection.kept-1"
    assert "2 file(s)" in err and str(kept) in err and "notes.txt" in err
    assert (kept / "notes.txt").read_text() == "my notes" and (kept / "mine" / "plot.png").read_bytes() == b"png"
    assert (sel / MARKER).is_file() and not (sel / "notes.txt").exists()
    assert "selection.parquet" not in {p.name for p in kept.rglob("*")}  # presel's own files are not "kept"


def test_run_stage_folder_over_an_input(tmp_path, capsys):
    _pool(tmp_path)
    (tmp_path / "run" / "selection").mkdir(parents=True)
    (tmp_path / "run" / "selection" / "ref.txt").write_text("alpha-0\nbeta-0\n")
    cfg = _config(tmp_path, reference="run/selection/ref.txt")
    for argv in (["run", str(cfg)], ["run", str(cfg), "--dry-run"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "stage folder select " in err and "contains the input select.reference" in err
    assert (tmp_path / "run" / "selection" / "ref.txt").is_file()


def test_run_checks_budget_count_and_annotations_up_front(tmp_path, capsys):
    _pool(tmp_path)
    cfg = _config(tmp_path, budget=None, budget_count=500)
    for argv in (["run", str(cfg)], ["run", str(cfg), "--dry-run"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "select.budget_count=500 is larger than the pool (60 distinct images" in err, err
    assert not (tmp_path / "run" / "selection").exists()
    (tmp_path / "anns.json").write_text('[{"id": "alpha-0", "image": "img/alpha/0.png", "conversations": [}]')
    data = yaml.safe_load(cfg.read_text())
    data["select"].pop("budget_count")
    data["select"]["budget"] = 0.2
    data["generate"] = {"from_annotations": "anns.json"}
    cfg.write_text(yaml.safe_dump(data))
    for argv in (["run", str(cfg)], ["run", str(cfg), "--dry-run"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "anns.json record 0" in err and "not valid JSON" in err, err
    assert not (tmp_path / "run" / "selection").exists()


def test_collect_result_files_may_sit_in_the_generation_folder(tmp_path):
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "results.jsonl").write_text("")
    check_apart({"--out": gen}, {"--collect": [str(gen / "results.jsonl")]}, {"--collect": "same"})
    with pytest.raises(PreselError, match="is the --collect"):
        check_apart({"--out": gen / "results.jsonl"}, {"--collect": [str(gen / "results.jsonl")]}, {"--collect": "same"})
