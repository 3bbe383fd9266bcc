"""The Stage layer of `presel run`: which settings rerun what, up-front validation, dry-run reasons,
deletion safety and the generation modes, on a small pool with cheap stages (no model)."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from presel.cli import main
from presel.pipeline import MARKER, REGISTRY, STAGE_DIRS, STAGES, Pipeline, RunConfig

CHEAP = ("reference", "annotate", "select", "generate", "report")


def _pool(root, n_per_task=20, d=8, seed=0, images=False):
    rng = np.random.default_rng(seed)
    rows, ids, feats, ann = [], [], [], []
    for task in ["alpha", "beta", "gamma"]:
        centre = rng.normal(size=d) * 3
        for i in range(n_per_task):
            rid, img = f"{task}-{i:03d}", f"img/{task}/{i}.png"
            rows.append({"id": rid, "image": img, "task": task})
            ann.append({"id": rid, "image": img, "conversations": [
                {"from": "human", "value": f"<image>\nWhat is {rid}?"}, {"from": "gpt", "value": f"It is {rid}."}]})
            ids.append(rid)
            feats.append(centre + rng.normal(size=d))
            if images:
                from PIL import Image

                (root / img).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (i * 10 % 255, 40, 90)).save(root / img)
    (root / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "annotations.json").write_text(json.dumps(ann))
    np.save(root / "feats.npy", np.asarray(feats, dtype=np.float32))
    (root / "ids.txt").write_text("\n".join(ids) + "\n")


def _write(root, cfg, name="config.yaml"):
    p = root / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def _chain(root, **over):
    cfg = {"out": "run", "pool": {"path": "pool.jsonl"},
           "reference": {"fraction": 0.1, "seed": 0},
           "annotate": {"annotations": "annotations.json"},
           "select": {"budget": 0.3, "seed": 0, "task_weights": "uniform", "images_per_cluster": 10,
                      "features": "feats.npy", "feature_ids": "ids.txt"},
           "generate": {"from_annotations": "annotations.json"},
           "report": {}}
    for sec, vals in over.items():
        cfg[sec] = None if vals is None else {**(cfg.get(sec) or {}), **vals}
    return _write(root, cfg)


def _run(path):
    logs: list[str] = []
    Pipeline(RunConfig.load(path), log=logs.append).run()
    return {s for s in STAGES if any(f" {s} -> " in x for x in logs)}, logs


def test_registry_is_the_one_list_of_stages():
    assert STAGES == tuple(s.name for s in REGISTRY)
    assert STAGE_DIRS["embed"] == "features" and STAGE_DIRS["score"] == "irs"
    for cls in REGISTRY:
        assert cls.name and cls.dir and callable(cls.run)
    from presel.pipeline.registry import output_paths

    paths = output_paths(Path("run"))
    assert paths["selection"] == Path("run/selection/selection.parquet") and paths["irs"] == Path("run/irs")


def test_a_real_setting_reruns_exactly_the_downstream_stages(tmp_path):
    _pool(tmp_path)
    ran, _ = _run(_chain(tmp_path))
    assert ran == set(CHEAP)
    ran, _ = _run(_chain(tmp_path))
    assert ran == set()
    ran, _ = _run(_chain(tmp_path, select={"seed": 1}))
    assert ran == {"select", "generate", "report"}
    ran, _ = _run(_chain(tmp_path, select={"seed": 1}, reference={"seed": 3}))
    assert ran == set(CHEAP)


def test_dry_run_says_what_reruns_and_why(tmp_path, capsys):
    _pool(tmp_path)
    _run(_chain(tmp_path))
    cfg = _chain(tmp_path, select={"seed": 1})
    assert main(["run", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "reference    up to date" in out and "annotate     up to date" in out
    assert "select       will rerun: select: seed 0 -> 1" in out
    assert "generate     will rerun: upstream stage select reruns" in out
    (tmp_path / "annotations.json").write_text((tmp_path / "annotations.json").read_text() + "\n")
    assert main(["run", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "annotate     will rerun: input file annotations changed" in out
    assert "select       will rerun: select: seed 0 -> 1; upstream stage reference" not in out  # reference is up to date
    assert main(["run", str(cfg), "--dry-run", "--force", "report"]) == 0
    assert "report       will rerun: --force" in capsys.readouterr().out
    # nothing ran
    assert json.loads((tmp_path / "run" / "selection" / MARKER).read_text())["settings"]["seed"] == 0


def test_dry_run_of_a_fresh_run_lists_every_stage_as_will_run(tmp_path, capsys):
    _pool(tmp_path)
    assert main(["run", str(_chain(tmp_path)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for s in CHEAP:
        assert f"  {s:12s} will run" in out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("over,needle", [
    ({"select": {"seed": "1"}}, "select: seed='1' must be an integer, got str; write it without quotes: `seed: 1`"),
    ({"generate": {"from_annotations": None, "base_url": "http://127.0.0.1:9/v1", "model": "m", "concurrency": "8"}},
     "generate: concurrency='8' must be an integer"),
    ({"reference": {"fraction": 2}}, "reference: fraction=2 must be a number in (0, 1]"),
    ({"select": {"kmeans_niter": 0}}, "select: kmeans_niter=0 must be an integer >= 1"),
    ({"annotate": {"annotations": "nope.json"}}, "annotate.annotations='nope.json'"),
    ({"generate": {"mode": "batch-files"}}, "unknown setting(s) mode in 'generate'"),
    ({"generate": {"from_annotations": None, "model": "m", "mode": "batch-filez"}}, "generate: mode='batch-filez' must be one of online"),
    ({"generate": {"from_annotations": None, "model": "m"}}, "no --base-url"),
    ({"final_model": {"model": "tiny-llava", "log_every": "5"}}, "final_model: log_every='5' must be an integer"),
    ({"final_model": {"model": "tiny-llava", "lrr": 1e-4}}, "unknown setting(s) lrr in 'final_model'"),
    ({"pool": {"task_map": "missing.json"}}, "pool.task_map='missing.json'"),
    ({"estimate": {"embed_images_per_s": "fast"}}, "estimate.embed_images_per_s='fast' must be a number > 0"),
    ({"estimate": {"embed_img_per_s": 10}}, "unknown setting(s) embed_img_per_s in 'estimate'"),
    ({"final_model": {"model": "../no/such/model"}}, "final_model.model='../no/such/model': no such model directory"),
])
def test_every_section_is_validated_before_any_stage_runs(tmp_path, capsys, over, needle):
    """A mistake in the last section stops the run before the first stage: exit 2, section, key, value and fix named."""
    _pool(tmp_path)
    cfg = _chain(tmp_path, **over)
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(cfg) in err
    assert not (tmp_path / "run").exists()


def test_dry_run_validates_too(tmp_path, capsys):
    _pool(tmp_path)
    assert main(["run", str(_chain(tmp_path, select={"seed": "1"})), "--dry-run"]) == 2
    assert "seed='1'" in capsys.readouterr().err


def test_foreign_folders_in_stage_places_survive_and_stop_the_run(tmp_path, capsys):
    """Issue scenario: `out: .` with the user's features/ and report/ beside config.yaml."""
    _pool(tmp_path)
    (tmp_path / "features").mkdir()
    np.save(tmp_path / "features" / "my_own_features.npy", np.zeros(3))
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "notes.txt").write_text("mine")
    cfg = _write(tmp_path, {"out": ".", "pool": {"path": "pool.jsonl"}, "embed": {"model": "dinov2-small"},
                            "select": {"budget": 0.3, "task_weights": "uniform"}, "report": {}})
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"stage folder {tmp_path / 'features'} exists and was not written by presel" in err and "move it away" in err
    assert (tmp_path / "features" / "my_own_features.npy").exists()
    assert (tmp_path / "report" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / ".presel-pending").exists()
    # the report folder alone is refused too
    cfg = _write(tmp_path, {"out": ".", "pool": {"path": "pool.jsonl"}, "report": {}})
    assert main(["run", str(cfg)]) == 2
    assert f"stage folder {tmp_path / 'report'} exists and was not written by presel" in capsys.readouterr().err
    assert (tmp_path / "report" / "notes.txt").read_text() == "mine"


def test_an_empty_folder_or_presel_output_is_replaced(tmp_path):
    _pool(tmp_path)
    (tmp_path / "run" / "selection").mkdir(parents=True)  # empty: nothing to lose
    ran, _ = _run(_chain(tmp_path))
    assert "select" in ran and (tmp_path / "run" / "selection" / MARKER).exists()
    (tmp_path / "run" / "selection" / "stale.txt").write_text("x")  # inside presel's own folder: replaced with it
    (tmp_path / "run" / ".selection.tmp-abc").mkdir()  # presel's leftover name
    (tmp_path / "run" / ".selection.mine").write_text("user")  # not a presel leftover name
    ran, _ = _run(_chain(tmp_path, select={"seed": 2}))  # presel's own output of other settings: replaced
    assert json.loads((tmp_path / "run" / "selection" / MARKER).read_text())["settings"]["seed"] == 2
    assert not (tmp_path / "run" / "selection" / "stale.txt").exists()
    assert not (tmp_path / "run" / ".selection.tmp-abc").exists()
    assert (tmp_path / "run" / ".selection.mine").read_text() == "user"


def test_old_markers_stay_valid(tmp_path):
    """A finished stage of an older presel (whole section in the key, neutral settings included) is not redone."""
    from presel.pipeline import StagePlan
    from presel.pipeline.workdir import stage_key

    _pool(tmp_path)
    calls = []

    class One(Pipeline):
        def plan(self):
            return [StagePlan("embed", {"model": "m"}, (), {}, lambda: calls.append(1), True,
                              legacy_settings={"model": "m", "workers": 4})]

    cfg = RunConfig.from_dict({"out": "run", "pool": {"path": "pool.jsonl"}, "embed": {}}, base_dir=tmp_path)
    p = One(cfg)
    p._pool_key()
    d = tmp_path / "run" / "features"
    d.mkdir(parents=True)
    old = stage_key("embed", {"model": "m", "workers": 4}, {"pool": p.keys["pool"]}, {})
    (d / MARKER).write_text(json.dumps({"key": old, "stage": "embed", "settings": {"model": "m", "workers": 4}}))
    One(cfg).run()
    assert calls == []
    assert json.loads((d / MARKER).read_text())["version"] == 2  # migrated to the new key
    One(cfg).run()
    assert calls == []


def _answer(rid):
    return json.dumps({"conversations": [{"question": f"What is shown in {rid}?", "answer": f"It is {rid}."},
                                         {"question": "What colour is it?", "answer": "Grey."}]})


def test_generate_batch_files_then_collect_in_run(tmp_path, capsys):
    _pool(tmp_path, images=True)
    gen = {"from_annotations": None, "mode": "batch-file", "model": "fake-vlm", "image_transport": "path",
           "concurrency": 4}
    cfg = _chain(tmp_path, generate=gen)
    assert main(["run", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "run paused at generate" in out and "generate.collect" in out
    gdir = tmp_path / "run" / "generate"
    assert not (gdir / MARKER).exists() and not (gdir / "train.json").exists()
    reqs = [json.loads(line) for f in sorted(gdir.glob("requests*.jsonl")) for line in f.read_text().splitlines()]
    assert reqs and all(r["body"]["model"] == "fake-vlm" for r in reqs)
    results = [{"id": f"b-{r['custom_id']}", "custom_id": r["custom_id"], "error": None,
                "response": {"status_code": 200, "request_id": "r", "body": {
                    "id": "c", "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": _answer(r["custom_id"])}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20}}}} for r in reqs]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in results))
    # collecting (and other result-neutral settings) keeps the request files: the stage resumes
    cfg = _chain(tmp_path, generate={**gen, "collect": ["results.jsonl"], "concurrency": 8})
    assert main(["run", str(cfg)]) == 0
    assert "run finished" in capsys.readouterr().out
    train = json.loads((gdir / "train.json").read_text())
    sel_ids = {r["id"] for r in train}
    assert {r["custom_id"] for r in reqs} <= sel_ids and (gdir / MARKER).exists()
    ran, _ = _run(cfg)
    assert ran == set()


def test_generate_online_mode_in_run(tmp_path, capsys):
    """The online mode maps its keys to GenerateConfig and sends one request per selected image."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "generate"))
    from gen_fake_server import FakeOpenAI

    _pool(tmp_path, images=True)
    with FakeOpenAI() as srv:
        cfg = _chain(tmp_path, generate={"from_annotations": None, "base_url": srv.base_url, "model": "fake-vlm",
                                         "concurrency": 2, "max_tokens": 64, "backoff_base": 0.01})
        assert main(["run", str(cfg)]) == 0
        assert srv.bodies and all(b["model"] == "fake-vlm" and b["max_tokens"] == 64 for b in srv.bodies)
        n = len(srv.bodies)
        # concurrency is result-neutral: nothing reruns, no request is sent again
        cfg = _chain(tmp_path, generate={"from_annotations": None, "base_url": srv.base_url, "model": "fake-vlm",
                                         "concurrency": 4, "max_tokens": 64, "backoff_base": 0.01})
        ran, _ = _run(cfg)
        assert ran == set() and len(srv.bodies) == n
    gdir = tmp_path / "run" / "generate"
    assert (gdir / MARKER).exists() and json.loads((gdir / "train.json").read_text())


def test_a_top_level_run_setting_reaches_every_stage_that_has_it(tmp_path, monkeypatch):
    """How `protocol: official|paper` plugs in: one name in RUN_SETTINGS (here `seed`, which two stages have)."""
    import presel.pipeline.config as pc

    monkeypatch.setattr(pc, "RUN_SETTINGS", ("seed",))
    _pool(tmp_path)
    cfg = yaml.safe_load(_chain(tmp_path).read_text())
    del cfg["reference"]["seed"], cfg["select"]["seed"]
    cfg["seed"] = 4
    path = _write(tmp_path, cfg)
    stages = {s.name: s for s in Pipeline(RunConfig.load(path)).stages()}
    assert stages["reference"].conf.seed == 4 and stages["select"].conf.seed == 4
    assert stages["select"].settings()["seed"] == 4 and "seed" not in stages["annotate"].settings()
    _run(path)
    cfg["seed"] = 5
    _write(tmp_path, cfg)
    ran, _ = _run(path)
    assert ran == set(CHEAP)  # reference reruns, so everything after it does


def test_model_paths_are_relative_to_the_config(tmp_path, monkeypatch):
    _pool(tmp_path)
    (tmp_path / "models" / "base").mkdir(parents=True)
    cfg = yaml.safe_load(_chain(tmp_path).read_text())
    cfg["final_model"] = {"model": "models/base", "lr": 1e-4}
    path = _write(tmp_path, cfg)
    monkeypatch.chdir(tmp_path / "models")  # not the config's folder
    stages = {s.name: s for s in Pipeline(RunConfig.load(path)).stages()}
    assert stages["final_model"].model() == str(tmp_path / "models" / "base")


@pytest.mark.parametrize("preset", ["llava665k.yaml", "vision_flan.yaml"])
def test_shipped_presets_validate(tmp_path, preset):
    """The paper presets pass the up-front validation once their files exist."""
    text = (Path(__file__).parents[2] / "configs" / preset).read_text()
    cfg = yaml.safe_load(text)
    root = tmp_path / "configs"
    root.mkdir()
    for p in (cfg["pool"]["path"], cfg["annotate"]["annotations"]):
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_text('{"id": "a", "image": "a.png", "task": "t"}\n' if p.endswith("l") else "[]")
    cfg["pool"]["image_root"] = "."
    for sec in ("ref_model", "final_model"):
        (root / cfg[sec]["model"]).mkdir(parents=True, exist_ok=True)
    path = _write(root, cfg, preset)
    names = [s.name for s in Pipeline(RunConfig.load(path)).stages()]
    assert names == [s for s in STAGES if s != "dedup"]  # near-duplicate removal is optional, not in the paper


def test_generate_batch_api_mode_in_run(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "generate"))
    from gen_fake_server import FakeBatchAPI

    _pool(tmp_path, images=True)
    srv = FakeBatchAPI(batch_script=["complete:1"])
    srv.base_url = srv.start()
    try:
        cfg = _chain(tmp_path, generate={"from_annotations": None, "mode": "batch-api", "base_url": srv.base_url,
                                         "model": "fake-vlm", "poll_interval": 0.01, "poll_max": 0.02})
        assert main(["run", str(cfg)]) == 0
        assert srv.created == 1
    finally:
        srv.stop()
    gdir = tmp_path / "run" / "generate"
    assert (gdir / MARKER).exists() and json.loads((gdir / "train.json").read_text())


def test_partial_output_of_an_older_presel_resumes(tmp_path):
    """A pending record written with the old key (neutral settings counted) keeps its partial output."""
    from presel.pipeline import StagePlan
    from presel.pipeline.workdir import stage_key

    _pool(tmp_path)
    seen = []
    d = tmp_path / "run" / "features"

    class One(Pipeline):
        def plan(self):
            return [StagePlan("embed", {"model": "m"}, (), {}, lambda: seen.append(sorted(x.name for x in d.iterdir())),
                              True, legacy_settings={"model": "m", "workers": 4})]

    cfg = RunConfig.from_dict({"out": "run", "pool": {"path": "pool.jsonl"}, "embed": {}}, base_dir=tmp_path)
    p = One(cfg)
    p._pool_key()
    d.mkdir(parents=True)
    (d / "shard-0").write_text("done work")
    (tmp_path / "run" / ".presel-pending").mkdir()
    old = stage_key("embed", {"model": "m", "workers": 4}, {"pool": p.keys["pool"]}, {})
    (tmp_path / "run" / ".presel-pending" / "embed.json").write_text(json.dumps({"key": old, "stage": "embed"}))
    One(cfg).run()
    assert seen == [["shard-0"]] and (d / MARKER).exists()
