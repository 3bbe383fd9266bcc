"""Every field of every config class: a wrong value stops `presel run` (before anything runs) and the command
line with exit code 2, naming the section, the key, the value and the fix; every field is a flag of its command;
cross-field checks live in the config classes, so both refuse the same things."""

import dataclasses
import json

import pytest
import yaml

from _support.configs import hints, invalid_values
from presel.cli import main
from presel.pipeline import REGISTRY


def _base(root, srv_url="http://127.0.0.1:9/v1"):
    (root / "pool.jsonl").write_text("".join(json.dumps({"id": f"t-{i}", "image": f"{i}.png", "task": "t"}) + "\n"
                                             for i in range(4)))
    (root / "ann.json").write_text("[]")
    return {"out": "run", "pool": {"path": "pool.jsonl"},
            "reference": {"fraction": 0.5}, "annotate": {"annotations": "ann.json"},
            "ref_model": {"model": "tiny-llava"}, "score": {}, "weights": {},
            "embed": {"model": "dinov2-small"}, "dedup": {},
            "select": {"budget": 0.5, "task_weights": "uniform"},
            "generate": {"base_url": srv_url, "model": "m"}, "final_model": {"model": "tiny-llava"}, "report": {}}


def _stage_fields():
    for cls in REGISTRY:
        for ccls in (c for c in (cls.config, *cls.also) if c is not None):
            for f in dataclasses.fields(ccls):
                yield cls.name, ccls, f.name


@pytest.mark.parametrize("section,ccls,name", list(_stage_fields()),
                         ids=[f"{s}.{n}" for s, _, n in _stage_fields()])
def test_a_wrong_value_of_any_field_stops_presel_run_naming_section_key_value_and_fix(tmp_path, capsys, section, ccls,
                                                                                    name):
    refused = []
    for value in invalid_values(hints(ccls)[name]):
        cfg = _base(tmp_path)
        cfg[section] = {**cfg[section], name: value}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        rc = main(["run", str(path), "--dry-run"])
        err = capsys.readouterr().err
        if rc == 0:
            continue
        assert rc == 2, err
        assert not (tmp_path / "run").exists(), "nothing may run before every section is checked"
        assert str(path) in err and f"{section}" in err and name in err, err
        shown = repr(value) if isinstance(value, str) else json.dumps(value) if not isinstance(value, float) else None
        assert shown is None or shown in err or str(value) in err, (value, err)
        assert any(w in err for w in ("must", "write", "use ", "set ", "give ", "need ", "fix ")), f"no fix named: {err}"
        refused.append(value)
    assert refused, f"{section}.{name}: no invalid value was refused"


def test_the_cli_and_presel_run_refuse_an_online_provider_alike(tmp_path, capsys):
    """provider anthropic/gemini speaks no online chat completions here: both front ends refuse it up front."""
    cfg = _base(tmp_path)
    cfg["generate"] = {**cfg["generate"], "provider": "anthropic", "mode": "online"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 2
    run_err = capsys.readouterr().err
    assert "generate: provider=anthropic is for mode batch-file/batch-api" in run_err
    cfg["generate"].pop("mode")  # online is the default
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 2
    assert "provider=anthropic" in capsys.readouterr().err
    (tmp_path / "sel.jsonl").write_text(json.dumps({"id": "t-0", "image": "0.png", "task": "t", "source": "selected"}))
    rc = main(["generate", "--selection", str(tmp_path / "sel.jsonl"), "--base-url", "http://127.0.0.1:9/v1",
               "--model", "m", "--provider", "anthropic", "--out", str(tmp_path / "g")])
    assert rc == 2 and "provider=anthropic is for mode batch-file/batch-api" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


# ----------------------------------------------------------------------- every field is a flag


def _commands():
    from presel.evaluate import EvalConfig
    from presel.features.extract import EmbedConfig
    from presel.finetune.train import FinetuneConfig
    from presel.generate.batch import BatchConfig
    from presel.generate.online import GenerateConfig
    from presel.generate.oracle import OracleConfig
    from presel.handoff import ExportConfig
    from presel.importance.reference import ReferenceConfig
    from presel.importance.scoring import ScoreConfig
    from presel.importance.weights import WeightsConfig
    from presel.selection.neardup import DedupConfig
    from presel.selection.select import SelectConfig

    return {("select",): [SelectConfig], ("generate",): [GenerateConfig, BatchConfig, OracleConfig],
            ("dedup",): [DedupConfig], ("weights",): [WeightsConfig], ("reference",): [ReferenceConfig],
            ("evaluate",): [EvalConfig], ("prepare", "export"): [ExportConfig], ("embed",): [EmbedConfig],
            ("score",): [ScoreConfig], ("finetune",): [FinetuneConfig]}


# a field whose flag carries another name (the flag came first)
RENAMED = {("OracleConfig", "annotations"): "--from-annotations"}


def _parser(cmd):
    import argparse

    from presel.cli import build_parser

    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    for word in cmd:
        p = sub.choices[word]
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        sub = subs[0] if subs else None
    return p


@pytest.mark.parametrize("cmd", list(_commands()), ids=[" ".join(c) for c in _commands()])
def test_every_config_field_is_a_flag_of_its_command(cmd):
    p = _parser(cmd)
    flags = {o: a for a in p._actions for o in a.option_strings}
    for ccls in _commands()[cmd]:
        for f in dataclasses.fields(ccls):
            flag = RENAMED.get((ccls.__name__, f.name), "--" + f.name.replace("_", "-"))
            assert flag in flags, f"presel {' '.join(cmd)}: {ccls.__name__}.{f.name} has no flag {flag}"
            assert flags[flag].dest == f.name, (flag, flags[flag].dest)
