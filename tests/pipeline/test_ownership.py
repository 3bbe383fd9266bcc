"""'Did presel write this?' is decided once (presel.io.owned.check_deletable): `presel run`'s stage folders and every
command's --out follow the same rule, including the edge cases where they used to differ."""

import json

import pytest

from presel.errors import PreselError
from presel.io.owned import check_deletable
from presel.pipeline.workdir import MARKER, KeyParts, StageDir


def _stage(tmp_path, kind, pending=False):
    run = tmp_path / "run"
    run.mkdir()
    p = run / "selection"
    target = tmp_path / "elsewhere"
    if kind == "file":
        p.write_text("my notes")
    elif kind == "link-user":
        target.mkdir()
        (target / "mine.txt").write_text("mine")
        p.symlink_to(target)
    elif kind == "link-presel":
        target.mkdir()
        (target / MARKER).write_text(json.dumps({"key": "k", "stage": "select", "version": 2}))
        p.symlink_to(target)
    elif kind == "user":
        p.mkdir()
        (p / "mine.txt").write_text("mine")
    elif kind == "empty":
        p.mkdir()
    elif kind == "v1-marker":
        p.mkdir()
        (p / MARKER).write_text(json.dumps({"key": "k", "stage": "select", "settings": {}}))  # no version: older presel
    elif kind == "fake-marker":
        p.mkdir()
        (p / MARKER).write_text(json.dumps({"note": "a file of the same name, not presel's"}))
    sd = StageDir(run, "select", p)
    if pending:
        sd.begin(KeyParts("select", {}, {}, {}))
    return sd, target


CASES = [  # (what sits at the stage path, pending record, may presel replace it)
    ("missing", False, True), ("empty", False, True), ("v1-marker", False, True), ("user", True, True),
    ("user", False, False), ("fake-marker", False, False),
    ("file", False, False), ("file", True, False),  # a pending record does not make a file presel's
    ("link-user", False, False), ("link-user", True, False),  # nor a link to the user's folder
    ("link-presel", False, True),  # a stage folder the user moved and linked back: the link goes, the target stays
]


@pytest.mark.parametrize("kind,pending,ok", CASES, ids=[f"{k}{'+pending' if p else ''}" for k, p, _ in CASES])
def test_the_stage_rule_is_the_one_rule(tmp_path, kind, pending, ok):
    sd, target = _stage(tmp_path, kind, pending)
    if ok:
        sd.check_owned()
        sd.clear()
        assert not sd.path.exists() and not sd.path.is_symlink()
        if kind == "link-presel":
            assert (target / MARKER).is_file()  # only the link was removed
    else:
        with pytest.raises(PreselError, match="presel deletes only what it wrote"):
            sd.check_owned()
        with pytest.raises(PreselError):
            sd.clear()
        assert sd.path.exists() or sd.path.is_symlink()
        if kind.startswith("link"):
            assert (target / "mine.txt").is_file()
    # the command-line rule gives the same answer for the same place (a pending record = the caller's own record)
    kw = {"started": pending, "only": (MARKER,), "linked_proof": True}
    if ok:
        check_deletable(sd.path, **kw)
    else:
        with pytest.raises(PreselError):
            check_deletable(sd.path, **kw)


def test_a_file_at_a_stage_path_with_a_pending_record_stops_the_run(tmp_path, capsys):
    from presel.cli import main

    (tmp_path / "pool.jsonl").write_text(json.dumps({"id": "a", "image": "a.png", "task": "t"}) + "\n")
    (tmp_path / "c.yaml").write_text("out: run\npool: {path: pool.jsonl}\nreference: {fraction: 1.0}\n")
    run = tmp_path / "run"
    (run / ".presel-pending").mkdir(parents=True)
    (run / ".presel-pending" / "reference.json").write_text(json.dumps({"key": "k", "stage": "reference"}))
    (run / "reference").write_text("the user's file")
    assert main(["run", str(tmp_path / "c.yaml")]) == 2
    assert "stage folder" in capsys.readouterr().err and (run / "reference").read_text() == "the user's file"
