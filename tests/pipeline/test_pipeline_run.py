import json

import numpy as np
import pytest
import yaml

from presel.cli import main
from presel.errors import PreselError
from presel.pipeline import MARKER, Pipeline, RunConfig


def _pool(tmp_path, n_per_task=60, d=8, seed=0):
    rng = np.random.default_rng(seed)
    rows, ids, feats = [], [], []
    for task in ["alpha", "beta", "gamma"]:
        centre = rng.normal(size=d) * 3
        for i in range(n_per_task):
            rid = f"{task}-{i:03d}"
            rows.append({"id": rid, "image": f"img/{task}/{i}.png", "task": task})
            ids.append(rid)
            feats.append(centre + rng.normal(size=d))
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    np.save(tmp_path / "feats.npy", np.asarray(feats, dtype=np.float32))
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    (tmp_path / "ref.txt").write_text("alpha-000\nbeta-000\ngamma-000\n")


def _config(tmp_path, **select):
    cfg = {"out": "run", "pool": {"path": "pool.jsonl"},
           "select": {"budget": 0.2, "seed": 0, "task_weights": "uniform", "images_per_cluster": 20,
                      "features": "feats.npy", "feature_ids": "ids.txt", "reference": "ref.txt", **select}}
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_run_caches_stages_and_reruns_on_change(tmp_path):
    _pool(tmp_path)
    cfg_path = _config(tmp_path)
    logs: list[str] = []
    Pipeline(RunConfig.load(cfg_path), log=logs.append).run()
    sel = tmp_path / "run" / "selection"
    first = (sel / "selection.parquet").read_bytes()
    assert (sel / MARKER).exists()
    summary = json.loads((sel / "summary.json").read_text())
    assert summary["totals"]["total"] == 36 and summary["totals"]["reference"] == 3  # floor(0.2 * 180)
    assert json.loads((tmp_path / "run" / "timings.json").read_text()).keys() == {"select"}

    logs.clear()
    Pipeline(RunConfig.load(cfg_path), log=logs.append).run()
    assert any("up to date" in s for s in logs)
    assert (sel / "selection.parquet").read_bytes() == first

    # a changed setting reruns the stage
    _config(tmp_path, seed=1)
    logs.clear()
    Pipeline(RunConfig.load(cfg_path), log=logs.append).run()
    assert not any("up to date" in s for s in logs)

    # a changed input file reruns it too
    (tmp_path / "ref.txt").write_text("alpha-001\nbeta-000\ngamma-000\n")
    logs.clear()
    Pipeline(RunConfig.load(cfg_path), log=logs.append).run()
    assert not any("up to date" in s for s in logs)


def test_cli_run_and_dry_run(tmp_path, capsys):
    _pool(tmp_path)
    cfg_path = _config(tmp_path)
    assert main(["run", str(cfg_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "180 image records, 180 distinct images, 3 tasks" in out
    assert "budget 36 images" in out
    assert not (tmp_path / "run").exists()
    assert main(["run", str(cfg_path)]) == 0
    assert (tmp_path / "run" / "selection" / "selection.jsonl").exists()


@pytest.mark.parametrize("cfg,needle", [
    ({"pool": {"path": "pool.jsonl"}}, "'out'"),
    ({"out": "r"}, "pool.path"),
    ({"out": "r", "pool": {"path": "pool.jsonl"}, "selectt": {}}, "unknown section(s) selectt"),
    ({"out": "r", "pool": {"path": "pool.jsonl"}, "select": {"budget": 0.2}}, "needs features"),
    ({"out": "r", "pool": {"path": "pool.jsonl"}, "select": {"features": "feats.npy", "feature_ids": "ids.txt"}},
     "no task weights"),
    ({"out": "r", "pool": {"path": "pool.jsonl"}, "score": {"model": "x"}}, "annotated reference set"),
])
def test_bad_configs(tmp_path, cfg, needle, capsys):
    _pool(tmp_path)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(p)]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(p) in err


def test_failed_stage_keeps_finished_ones(tmp_path):
    _pool(tmp_path)
    cfg_path = _config(tmp_path, select_unknown_flag=1)
    with pytest.raises(PreselError, match="unknown setting"):
        Pipeline(RunConfig.load(cfg_path)).run()
    assert not (tmp_path / "run" / "selection").exists()


@pytest.mark.parametrize("section,needle", [
    ({"reference": {"fraction": 0.05, "sed": 1}}, "unknown setting(s) sed"),
    ({"reference": {}, "annotate": {"annotations": "a.json", "oops": 1}}, "unknown setting(s) oops in 'annotate'"),
    ({"report": {"title": "x"}}, "unknown setting(s) title in 'report'"),
])
def test_unknown_settings_in_plain_sections(tmp_path, section, needle, capsys):
    _pool(tmp_path)
    (tmp_path / "a.json").write_text("[]")
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"out": "r", "pool": {"path": "pool.jsonl"}, **section}))
    assert main(["run", str(p)]) == 2
    assert needle in capsys.readouterr().err


def test_partial_stage_resumes_only_with_the_same_settings(tmp_path):
    """A resumable stage that stopped midway keeps its output for a rerun of the same settings, not of others."""
    from presel.pipeline import StagePlan

    _pool(tmp_path)
    calls = []

    class Once(Pipeline):
        def plan(self):
            d = self.cfg.stage_dir("embed")

            def run():
                calls.append(sorted(p.name for p in d.iterdir()) if d.exists() else None)
                d.mkdir(parents=True, exist_ok=True)
                (d / "part-1").write_text("x")
                if len(calls) == 1:
                    raise RuntimeError("killed")

            return [StagePlan("embed", dict(self.cfg.sections["embed"]), (), {}, run, resumable=True)]

    def cfg(setting):
        return RunConfig.from_dict({"out": "run", "pool": {"path": "pool.jsonl"}, "embed": {"x": setting}},
                                   base_dir=tmp_path)

    with pytest.raises(RuntimeError):
        Once(cfg(1)).run()
    Once(cfg(1)).run()  # same settings: the partial output is kept for the stage to resume
    assert calls[1] == ["part-1"]
    calls.clear()
    with pytest.raises(RuntimeError):
        Once(cfg(2)).run()
    calls.append("second")  # make the next run succeed
    Once(cfg(3)).run()  # other settings: the partial output of settings 2 is removed first
    assert calls[-1] is None


def test_run_never_deletes_folders_it_did_not_write(tmp_path, capsys):
    """out: . beside the user's own features/ and report/ folders: the run stops, both files survive."""
    _pool(tmp_path)
    (tmp_path / "features").mkdir()
    np.save(tmp_path / "features" / "my_own_features.npy", np.zeros((2, 2), dtype=np.float32))
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "notes.txt").write_text("mine")
    (tmp_path / ".report.tmp-notes").write_text("also mine")
    cfg = {"out": ".", "pool": {"path": "pool.jsonl"}, "embed": {"model": "dinov2-small"},
           "select": {"budget": 0.2, "seed": 0, "task_weights": "uniform", "reference": "ref.txt"}, "report": {}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "config.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"stage folder {tmp_path / 'features'}" in err and "move it away" in err
    assert (tmp_path / "features" / "my_own_features.npy").is_file()
    assert (tmp_path / "report" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "selection").exists()  # refused before any stage ran

    # without the embed stage, the report folder is named, still before selection runs
    cfg = {"out": ".", "pool": {"path": "pool.jsonl"},
           "select": {"budget": 0.2, "seed": 0, "task_weights": "uniform", "reference": "ref.txt",
                      "features": "feats.npy", "feature_ids": "ids.txt"}, "report": {}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "config.yaml")]) == 2
    assert f"stage folder {tmp_path / 'report'}" in capsys.readouterr().err
    assert (tmp_path / "report" / "notes.txt").read_text() == "mine"
    assert (tmp_path / ".report.tmp-notes").read_text() == "also mine"
    assert not (tmp_path / "selection").exists()


def test_run_replaces_its_own_stage_folder_and_leftovers(tmp_path):
    _pool(tmp_path)
    cfg_path = _config(tmp_path)
    Pipeline(RunConfig.load(cfg_path), log=lambda s: None).run()
    sel = tmp_path / "run" / "selection"
    (sel / "stale.txt").write_text("x")  # inside presel's own stage folder: replaced with it
    (tmp_path / "run" / ".selection.tmp-abc").mkdir()
    (tmp_path / "run" / ".selection.mine").write_text("user")  # not a presel leftover name
    _config(tmp_path, seed=1)
    Pipeline(RunConfig.load(cfg_path), log=lambda s: None).run()
    assert not (sel / "stale.txt").exists() and (sel / MARKER).is_file()
    assert not (tmp_path / "run" / ".selection.tmp-abc").exists()
    assert (tmp_path / "run" / ".selection.mine").read_text() == "user"
