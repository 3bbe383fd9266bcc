"""A failed `presel score` records nothing, so the corrected command is never refused."""

import pytest
from imp_data import make_annotated

from presel.cli import main


def test_failed_score_leaves_no_state_and_the_fixed_command_runs(tiny_llava, tmp_path, capsys):
    data = make_annotated(tmp_path / "data")
    out = tmp_path / "irs"
    common = ["score", "--data", str(data), "--out", str(out), "--batch-size", "4", "--dtype", "fp32",
              "--device", "cpu", "--quiet"]
    rc = main([*common, "--model", str(tmp_path / "no-such-model")])
    assert rc == 2
    assert "no-such-model" in capsys.readouterr().err
    assert not (out / "score_state.json").exists()
    assert main([*common, "--model", str(tiny_llava)]) == 0
    assert (out / "irs.parquet").is_file() and (out / "score_state.json").is_file()


def test_score_overwrite_never_deletes_a_user_folder(tiny_llava, tmp_path, capsys):
    data = make_annotated(tmp_path / "data")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc = main(["score", "--data", str(data), "--out", str(out), "--model", str(tiny_llava), "--overwrite", "--quiet"])
    assert rc == 2
    assert f"--out {out} exists and was not written by presel" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


pytestmark = pytest.mark.filterwarnings("ignore")


def test_score_errors_name_only_its_own_flags(tmp_path, capsys):
    import json

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x", "image": "a.png", "conversations": []}]))
    assert main(["score", "--data", str(bad), "--model", "tiny-llava", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no task for id 'x'" in err and "--default-task" in err
    assert "--task-map" not in err and "--task-rule" not in err
    assert main(["score", "--data", str(tmp_path / "nope.json"), "--model", "tiny-llava", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "check --data" in err and "--pool" not in err
