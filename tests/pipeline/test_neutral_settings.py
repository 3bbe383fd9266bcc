"""Result-neutral settings are declared once, on the config field (presel.config.neutral / output_format), and the
stage key of `presel run` and each step's own resume identity agree about them: a harmless edit of a finished
run's YAML never recomputes anything, and never sends a paid request again."""

import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from _support.configs import alternative
from presel.config import FORMAT, NEUTRAL, effect_of
from presel.pipeline import MARKER, REGISTRY, STAGES, Pipeline, RunConfig

sys.path.insert(0, str(Path(__file__).parents[1] / "generate"))
from gen_fake_server import FakeOpenAI  # noqa: E402


def _pool16(root: Path) -> None:
    """16 images in 2 tasks, real PNGs, and 8-d features."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows, feats = [], []
    for t, task in enumerate(["alpha", "beta"]):
        for i in range(8):
            rid, img = f"{task}-{i}", f"img/{task}/{i}.png"
            (root / img).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (i * 30, t * 90, 60)).save(root / img)
            rows.append({"id": rid, "image": img, "task": task})
            feats.append(rng.normal(size=8) + 4 * t)
    (root / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    np.save(root / "feats.npy", np.asarray(feats, dtype=np.float32))
    (root / "ids.txt").write_text("".join(r["id"] + "\n" for r in rows))


def _config(root: Path, generate: dict, **more) -> Path:
    cfg = {"out": "run", "pool": {"path": "pool.jsonl"},
           "select": {"budget_count": 8, "seed": 0, "task_weights": "uniform", "images_per_cluster": 4,
                      "features": "feats.npy", "feature_ids": "ids.txt"},
           "generate": generate, **more}
    p = root / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _run(path: Path) -> tuple[set[str], list[str]]:
    logs: list[str] = []
    Pipeline(RunConfig.load(path), log=logs.append).run()
    return {s for s in STAGES if any(f" {s} -> " in x for x in logs)}, logs


@pytest.fixture
def server():
    with FakeOpenAI() as srv:
        yield srv
    assert not srv.server_errors, srv.server_errors


def _online(srv: FakeOpenAI, **kw) -> dict:
    return {"base_url": srv.base_url, "model": "fake-vlm", "concurrency": 2, "backoff_base": 0.01, **kw}


def test_editing_prices_or_retries_of_a_finished_run_sends_no_request(tmp_path, server):
    """The issue's case: select 8 of 16, generate online (8 requests); then price_in, price_out and parse_retries
    change in the YAML: 0 requests, train.json unchanged, nothing deleted."""
    _pool16(tmp_path)
    cfg = _config(tmp_path, _online(server))
    ran, _ = _run(cfg)
    assert ran == {"select", "generate"} and len(server.bodies) == 8
    gdir = tmp_path / "run" / "generate"
    train = (gdir / "train.json").read_bytes()
    results = (gdir / "results.jsonl").read_bytes()
    marker = (gdir / MARKER).read_bytes()
    for edit in ({"price_in": 2.5}, {"price_out": 10.0}, {"parse_retries": 5},
                 {"price_in": 2.5, "price_out": 10.0, "parse_retries": 5}):
        cfg = _config(tmp_path, _online(server, **edit))
        ran, logs = _run(cfg)
        assert ran == set(), (edit, logs)
        assert len(server.bodies) == 8, edit
        assert (gdir / "train.json").read_bytes() == train and (gdir / "results.jsonl").read_bytes() == results
        assert (gdir / MARKER).read_bytes() == marker


def test_a_format_change_rewrites_the_output_from_the_results_without_a_request(tmp_path, server):
    _pool16(tmp_path)
    cfg = _config(tmp_path, _online(server), report={})
    _run(cfg)
    gdir = tmp_path / "run" / "generate"
    train = (gdir / "train.json").read_bytes()
    assert len(server.bodies) == 8 and not (gdir / "train_sharegpt.json").exists()
    cfg = _config(tmp_path, _online(server, format="sharegpt"), report={})
    rows = Pipeline(RunConfig.load(cfg)).status()
    state = {name: (st, why) for name, st, why in rows}
    assert state["generate"][0] == "will rewrite its outputs"
    assert "generate: format unset -> 'sharegpt'" in state["generate"][1][0]
    assert state["select"][0] == "up to date" and state["report"][0] == "up to date"
    ran, logs = _run(cfg)
    assert len(server.bodies) == 8, logs  # no request
    assert any("rewriting its outputs" in x for x in logs)
    assert (gdir / "train.json").read_bytes() == train
    share = json.loads((gdir / "train_sharegpt.json").read_text())
    assert len(share) == len(json.loads(train)) == 8
    assert ran == {"generate"}  # the report reads train.json, which did not change
    ran, _ = _run(cfg)
    assert ran == set()


# ----------------------------------------------------------------------- the two derivations agree, field by field


def _stage(cls, section):
    return cls(SimpleNamespace(cfg=SimpleNamespace(source="test")), section)


def _step_identities():
    """stage name -> {config class: the step's own resume identity of a config of that class}."""
    from presel.config import from_dict
    from presel.features.extract import EmbedConfig, store_identity
    from presel.finetune.train import FinetuneConfig, resume_identity
    from presel.generate.batch import BatchConfig
    from presel.generate.online import GenerateConfig, run_key
    from presel.generate.templates import load_templates
    from presel.importance.scoring import ScoreConfig, _model_identity, score_identity

    def gen(c):
        return run_key(c, load_templates(c.templates), ["alpha", "beta"])

    finetune = {FinetuneConfig: resume_identity}
    return {
        # the generation run key is all that decides whether results are reused; the batch settings never enter it
        "generate": {GenerateConfig: gen, BatchConfig: lambda c: run_key(from_dict(GenerateConfig, {"model": "m"}),
                                                                         load_templates(None), ["alpha"])},
        # the input size and compute dtype as embed_pool resolves them on CPU (the model's default size: 224)
        "embed": {EmbedConfig: lambda c: store_identity(c, "fp32", (c.image_size or 224,) * 2)},
        "score": {ScoreConfig: lambda c: score_identity(c, _model_identity(c.model))},
        "ref_model": finetune,
        "final_model": finetune,
    }


def test_every_resuming_stage_has_a_step_identity():
    """A stage that keeps a partial output resumes through its step's own identity: each one is in the map below,
    and each stage without one starts from an empty folder when its key changes."""
    ids = _step_identities()
    for cls in REGISTRY:
        assert (cls.name in ids) == cls.resumable, cls.name


@pytest.mark.parametrize("stage", sorted(_step_identities()))
def test_stage_key_and_step_identity_agree_about_every_field(stage, tmp_path):
    from presel.config import from_dict

    tpl = tmp_path / "templates.yaml"
    tpl.write_text(yaml.safe_dump({"templates": {"alpha": {"kind": "qa", "system": "Be brief.",
                                                           "user": "Ask about {task}."}}}))
    cls = next(c for c in REGISTRY if c.name == stage)
    for ccls, ident in _step_identities()[stage].items():
        base = {"model": "m"} if ccls.__name__ == "GenerateConfig" else {}
        before = ident(from_dict(ccls, base))
        for f in dataclasses.fields(ccls):
            alt = {"templates": str(tpl)} if f.name == "templates" else alternative(ccls, f.name)
            section = {**base, **alt}
            step_changes = ident(from_dict(ccls, section)) != before
            key_changes = _stage(cls, section).settings() != _stage(cls, base).settings()
            work_changes = {k: v for k, v in _stage(cls, section).settings().items() if k not in cls.reformat} != \
                {k: v for k, v in _stage(cls, base).settings().items() if k not in cls.reformat}
            effect = effect_of(ccls, f.name)
            assert step_changes == work_changes, (stage, f.name, effect, section)
            assert key_changes == (effect != NEUTRAL), (stage, f.name, effect)
            assert work_changes == (effect not in (NEUTRAL, FORMAT)), (stage, f.name, effect)


def test_every_neutral_setting_of_every_stage_stays_out_of_its_key():
    for cls in REGISTRY:
        for ccls in [c for c in (cls.config, *cls.also) if c is not None]:
            for f in dataclasses.fields(ccls):
                if effect_of(ccls, f.name) != NEUTRAL:
                    continue
                alt = alternative(ccls, f.name)
                base = {k: v for k, v in alt.items() if k != f.name}
                assert _stage(cls, alt).settings() == _stage(cls, base).settings(), (cls.name, f.name)


# ----------------------------------------------------------------------- edited in a finished run: nothing reruns


def _edits(ccls, skip=()):
    for f in dataclasses.fields(ccls):
        if effect_of(ccls, f.name) == NEUTRAL and f.name not in skip:
            yield f.name, alternative(ccls, f.name)


def test_each_neutral_setting_edited_in_a_finished_run_recomputes_and_deletes_nothing(tmp_path, server, tiny_dinov2):
    """generate (online + batch settings), dedup and embed (a tiny model): every neutral setting, one at a time."""
    from presel.generate.batch import BatchConfig
    from presel.generate.online import GenerateConfig
    from presel.selection.neardup import DedupConfig

    _pool16(tmp_path)
    embed = {"model": str(tiny_dinov2), "device": "cpu", "batch_size": 4, "num_workers": 0, "progress": False}
    gen = _online(server)
    sel = {"budget_count": 8, "seed": 0, "task_weights": "uniform", "images_per_cluster": 4}

    def write(embed_s, dedup_s, gen_s):
        p = tmp_path / "config.yaml"
        p.write_text(yaml.safe_dump({"out": "run", "pool": {"path": "pool.jsonl"}, "embed": embed_s, "dedup": dedup_s,
                                     "select": sel, "generate": gen_s}))
        return p

    ran, _ = _run(write(embed, {"threshold": 0.99}, gen))
    assert ran == {"embed", "dedup", "select", "generate"} and len(server.bodies) == 8
    run = tmp_path / "run"
    snapshot = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != "timings.json"}

    def check(edit):
        ran, logs = _run(write(*edit))
        assert ran == set() and len(server.bodies) == 8, (edit, logs)
        now = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != "timings.json"}
        assert now == snapshot, edit  # nothing rewritten, nothing deleted

    from presel.features.extract import EmbedConfig

    for _name, alt in _edits(EmbedConfig):
        check(({**embed, **alt}, {"threshold": 0.99}, gen))
    for _name, alt in _edits(DedupConfig):
        check((embed, {"threshold": 0.99, **alt}, gen))
    for _name, alt in [*_edits(GenerateConfig), *_edits(BatchConfig)]:
        check((embed, {"threshold": 0.99}, {**gen, **alt}))
