"""One name per setting: flags derived from the config dataclass, type checks shared by YAML and flags."""

import argparse

import pytest

from presel.config import config_from_args, from_dict
from presel.errors import PreselError
from presel.finetune.train import FinetuneConfig


def _parse(*argv):
    from presel.commands import finetune

    p = argparse.ArgumentParser()
    finetune.add_arguments(p)
    return config_from_args(FinetuneConfig, p.parse_args(["--data", "d", "--model", "m", "--out", "o", *argv]))


def test_every_finetune_field_is_a_flag_named_like_its_yaml_key():
    from presel.commands import finetune

    p = argparse.ArgumentParser()
    finetune.add_arguments(p)
    flags = {s for a in p._actions for s in a.option_strings}
    import dataclasses

    for f in dataclasses.fields(FinetuneConfig):
        assert "--" + f.name.replace("_", "-") in flags
    assert _parse() == FinetuneConfig()


def test_new_names_and_old_aliases_give_the_same_config():
    new = _parse("--save-every-steps", "3", "--no-freeze-vision", "--max-length", "none", "--max-grad-norm", "none",
                 "--target-modules", "q_proj,v_proj")
    old = _parse("--save-every", "3", "--train-vision", "--max-length", "0", "--max-grad-norm", "0",
                 "--target-modules", "q_proj v_proj")
    assert new == old
    assert new.save_every_steps == 3 and not new.freeze_vision and new.max_length is None
    assert new.target_modules == ("q_proj", "v_proj")


def test_flags_get_the_dataclass_checks():
    with pytest.raises(PreselError, match="command line: lr=-1.0 must be > 0"):
        _parse("--lr", "-1")
    with pytest.raises(SystemExit):
        _parse("--epochs", "one")


@pytest.mark.parametrize("data,needle", [
    ({"seed": "1"}, "x: seed='1' must be an integer, got str; write it without quotes: `seed: 1`"),
    ({"lr": True}, "lr=True must be a number"),
    ({"freeze_vision": "yes"}, "freeze_vision='yes' must be true or false"),
    ({"target_modules": [1, 2]}, "target_modules=[1, 2] must be a list of strings or null"),
    ({"max_length": 0}, "x: max_length=0 must be an integer >= 8"),
])
def test_from_dict_names_key_value_and_fix(data, needle):
    with pytest.raises(PreselError) as e:
        from_dict(FinetuneConfig, data, source="x")
    assert needle in str(e.value)


def test_from_dict_accepts_what_yaml_gives():
    c = from_dict(FinetuneConfig, {"lr": 1, "target_modules": "q_proj,v_proj", "max_length": None}, source="x")
    assert c.lr == 1 and c.target_modules == ("q_proj", "v_proj") and c.max_length is None


# ---- embed and score: the same helper, the YAML key is the flag, old flags still work


def _flags(module):
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p, {s for a in p._actions for s in a.option_strings}


def _embed(*argv):
    from presel.commands import embed
    from presel.features.extract import EmbedConfig

    p, _ = _flags(embed)
    return config_from_args(EmbedConfig, p.parse_args(["--pool", "p.jsonl", "--out", "o", *argv]))


def _score(*argv):
    from presel.commands import score
    from presel.importance.scoring import ScoreConfig

    p, _ = _flags(score)
    args = p.parse_args(["--data", "d", "--model", "m", "--out", "o", *argv])
    return config_from_args(ScoreConfig, args), args


def test_every_embed_and_score_field_is_a_flag_named_like_its_yaml_key():
    import dataclasses

    from presel.commands import embed, score
    from presel.features.extract import EmbedConfig
    from presel.importance.scoring import ScoreConfig

    for module, cls in ((embed, EmbedConfig), (score, ScoreConfig)):
        _, flags = _flags(module)
        for f in dataclasses.fields(cls):
            assert "--" + f.name.replace("_", "-") in flags, (cls.__name__, f.name)
    assert _embed() == EmbedConfig()
    assert _score()[0] == ScoreConfig(model="m")


def test_embed_booleans_are_flag_pairs_and_old_no_progress_still_works():
    assert _embed("--no-progress").progress is False
    assert _embed("--progress").progress is True
    cfg = _embed("--workers", "0", "--ray-actors", "3", "--image-size", "none", "--dtype", "fp32", "--device", "cpu")
    assert (cfg.num_workers, cfg.ray_actors, cfg.image_size, cfg.dtype, cfg.device) == (0, 3, None, "fp32", "cpu")
    with pytest.raises(PreselError, match="command line: batch_size=0"):
        _embed("--batch-size", "0")


def test_score_old_flags_are_hidden_aliases_of_the_new_names():
    from presel.commands import score

    new, new_args = _score("--ray-actors", "3", "--no-prefetch", "--no-progress")
    old, old_args = _score("--workers", "3", "--no-prefetch", "--quiet")
    assert new == old and new.ray_actors == 3 and new.prefetch is False
    assert new_args.progress is old_args.progress is False
    p, _ = _flags(score)
    shown = p.format_help()
    assert "--ray-actors" in shown and "--workers" not in shown and "--quiet" not in shown


def test_score_workers_is_a_deprecated_yaml_alias_of_ray_actors(capsys):
    from presel.importance.scoring import ScoreConfig

    cfg = from_dict(ScoreConfig, {"workers": 2}, source="run.yaml: score")
    assert cfg.ray_actors == 2 and cfg == ScoreConfig(ray_actors=2)
    assert "'workers' is deprecated, write 'ray_actors'" in capsys.readouterr().err
    assert "workers" not in {f.name for f in __import__("dataclasses").fields(ScoreConfig)}
    with pytest.raises(PreselError, match="disagree"):
        from_dict(ScoreConfig, {"workers": 2, "ray_actors": 3}, source="x")
    with pytest.raises(PreselError, match="workers=0"):
        ScoreConfig(workers=0)


def test_score_ray_actors_under_either_name_never_invalidates_the_stage():
    from presel.pipeline.stages.score import Score

    assert "ray_actors" in Score.neutral and "workers" in Score.takes()
    stage = Score.__new__(Score)
    stage.section = {"dtype": "fp32", "workers": 4, "ray_actors": 4, "batch_size": 2}
    assert stage.settings() == {"dtype": "fp32"}


# ---- one dtype vocabulary, one device resolver


def test_every_stage_takes_its_dtype_names_from_the_one_table():
    from presel import devices
    from presel.commands import finetune, score
    from presel.features import extract
    from presel.finetune import train
    from presel.importance.scoring import ScoreConfig
    from presel.vlm import load

    assert load.DTYPES is devices.DTYPES and load.resolve_dtype is devices.resolve_dtype
    assert extract.DTYPES == ("auto", "fp32", "bf16", "fp16") == devices.dtype_choices()
    assert train.DTYPES == ("auto", "fp32", "bf16")  # fp16 training would need loss scaling
    for name in extract.DTYPES[1:]:
        assert name in devices.DTYPES
    for module, dtypes in ((score, devices.dtype_choices()), (finetune, train.DTYPES)):
        p = argparse.ArgumentParser()
        module.add_arguments(p)
        action = next(a for a in p._actions if "--dtype" in a.option_strings)
        assert tuple(action.choices) == dtypes
    assert ScoreConfig(dtype="bfloat16").dtype == "bfloat16"  # long names stay accepted where they were
    with pytest.raises(PreselError, match="dtype='fp8' must be one of auto, bf16"):
        ScoreConfig(dtype="fp8")


def test_one_device_and_dtype_resolver():
    torch = pytest.importorskip("torch")
    from presel import devices

    assert devices.resolve_dtype("auto", "cpu") == torch.float32
    assert devices.resolve_dtype("bfloat16", "cpu") == devices.resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert devices.resolve_dtype_name("float16", "cuda:0") == "fp16"
    assert devices.resolve_device("cpu") == "cpu"
    with pytest.raises(PreselError, match="dtype='int8' must be one of auto"):
        devices.resolve_dtype("int8", "cpu")
    if not torch.cuda.is_available():
        assert devices.resolve_device("auto") == devices.resolve_device("auto", rank=1) == "cpu"
        assert devices.resolve_dtype_name("auto", "cuda:0") == "bf16"
        with pytest.raises(PreselError, match="device='cuda:1' but CUDA is not available"):
            devices.resolve_device("cuda:1")
    else:
        assert devices.resolve_device("auto", rank=1) == devices.resolve_device("cuda", rank=1) == "cuda:1"
