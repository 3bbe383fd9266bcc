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
