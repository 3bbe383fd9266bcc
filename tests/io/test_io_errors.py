"""Bad inputs and unwritable outputs: one located error (exit code 2), never a traceback."""

import errno
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from presel.cli import main


@pytest.fixture
def pool_dir(tmp_path):
    rows = [{"id": f"a{i}", "image": f"img/{i}.png", "task": "t1" if i < 10 else "t2"} for i in range(20)]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    np.save(tmp_path / "feats.npy", np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32))
    (tmp_path / "ids.txt").write_text("\n".join(r["id"] for r in rows) + "\n")
    pq.write_table(pa.table({"id": ["a0", "a10"], "task": ["t1", "t2"], "irs": [0.5, 0.7]}), tmp_path / "irs.parquet")
    return tmp_path


def _select(d, *extra, pool="pool.jsonl", out="sel"):
    return main(["select", "--pool", str(d / pool), "--features", str(d / "feats.npy"), "--feature-ids",
                 str(d / "ids.txt"), "--budget", "0.5", "--task-weights", "uniform", "--out", str(d / out), *extra])


def _err(capsys, rc, code=2):
    assert rc == code
    return capsys.readouterr().err


def test_invalid_utf8_jsonl_names_the_line(pool_dir, capsys):
    (pool_dir / "bad.jsonl").write_bytes(b'{"id": "a0", "image": "img/0.png", "task": "t1"}\n'
                                         b'{"id": "a1", "image": "img/\xff.png", "task": "t1"}\n')
    err = _err(capsys, _select(pool_dir, pool="bad.jsonl"))
    assert f"{pool_dir / 'bad.jsonl'} line 2: not UTF-8 text (byte 0xff" in err


@pytest.mark.parametrize("name", ["corrupt.parquet", "json_as.parquet"])
def test_corrupt_parquet_pool(pool_dir, capsys, name):
    (pool_dir / name).write_bytes(b"PAR1garbagePAR1" if name.startswith("corrupt") else b'{"id": "a0"}')
    err = _err(capsys, _select(pool_dir, pool=name))
    assert f"{pool_dir / name}: not a readable Parquet file" in err and "Traceback" not in err


def test_corrupt_parquet_selection(tmp_path, capsys):
    (tmp_path / "selection.parquet").write_bytes(b"PAR1garbagePAR1")
    err = _err(capsys, main(["generate", "--selection", str(tmp_path / "selection.parquet"), "--from-annotations",
                             str(tmp_path / "ann.json"), "--out", str(tmp_path / "gen")]))
    assert f"{tmp_path / 'selection.parquet'}: not a readable Parquet file" in err


@pytest.mark.parametrize("content,needle", [
    (b"PAR1garbagePAR1", "not a readable Parquet file"),
    (json.dumps({"t1": 0.5}).encode(), "not a readable Parquet file (it looks like JSON)"),
])
def test_bad_irs_file(tmp_path, capsys, content, needle):
    p = tmp_path / "irs.json"
    p.write_bytes(content)
    err = _err(capsys, main(["weights", "--irs", str(p), "--out", str(tmp_path / "w.json")]))
    assert f"{p}: {needle}" in err and "--irs" in err


def test_irs_column_of_strings(tmp_path, capsys):
    pq.write_table(pa.table({"id": ["x1", "x2"], "task": ["a", "b"], "irs": ["0.5", "high"]}), tmp_path / "irs.parquet")
    err = _err(capsys, main(["weights", "--irs", str(tmp_path / "irs.parquet"), "--out", str(tmp_path / "w.json")]))
    assert f"{tmp_path / 'irs.parquet'} row 1 (id 'x1'): irs='0.5' is not a number" in err


@pytest.mark.parametrize("text,needle", [
    ("rules: [ {prefix: img/, task: x\n", "line 2: not valid YAML"),
    ("- task: x\n", "rule 1 {'task': 'x'} needs both 'prefix' and 'task'"),
])
def test_broken_task_rule_file(pool_dir, capsys, text, needle):
    (pool_dir / "rules.yaml").write_text(text)
    err = _err(capsys, _select(pool_dir, "--task-rule", str(pool_dir / "rules.yaml")))
    assert f"{pool_dir / 'rules.yaml'}" in err and needle in err


def test_existing_directory_where_a_file_is_expected(pool_dir, capsys):
    (pool_dir / "w").mkdir()
    (pool_dir / "w" / "keep.txt").write_text("mine")
    err = _err(capsys, main(["weights", "--irs", str(pool_dir / "irs.parquet"), "--out", str(pool_dir / "w")]))
    assert f"{pool_dir / 'w'} is an existing directory, but a file is written there" in err
    assert (pool_dir / "w" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("code,needle", [(errno.ENOSPC, "no space left on the device"),
                                         (errno.EROFS, "read-only file system")])
def test_unwritable_out(pool_dir, capsys, monkeypatch, code, needle):
    import presel.io.atomic as atomic

    real_fsync = os.fsync

    def full(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic.os, "fsync", full)
    err = _err(capsys, main(["weights", "--irs", str(pool_dir / "irs.parquet"), "--out", str(pool_dir / "w.json")]))
    assert f"cannot write {pool_dir / 'w.json'}: {needle}" in err
    assert not (pool_dir / "w.json").exists() and not list(pool_dir.glob(".w.json.tmp-*"))
    monkeypatch.setattr(atomic.os, "fsync", real_fsync)
    err = _err(capsys, _select(pool_dir, out="pool.jsonl/sel"))
    assert f"cannot write {pool_dir / 'pool.jsonl' / 'sel'}" in err


def test_read_only_out_folder(pool_dir, capsys, monkeypatch):
    import tempfile

    def ro(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(pool_dir / "ro"))

    monkeypatch.setattr(tempfile, "mkdtemp", ro)
    err = _err(capsys, _select(pool_dir, out="ro/sel"))
    assert f"cannot write {pool_dir / 'ro' / 'sel'}: permission denied" in err


def test_weights_too_large_to_normalise(pool_dir, capsys):
    (pool_dir / "w.json").write_text('{"t1": 1e308, "t2": 1e308}')
    rc = main(["select", "--pool", str(pool_dir / "pool.jsonl"), "--features", str(pool_dir / "feats.npy"),
               "--feature-ids", str(pool_dir / "ids.txt"), "--budget", "0.5", "--weights", str(pool_dir / "w.json"),
               "--out", str(pool_dir / "sel")])
    err = _err(capsys, rc)
    assert f"{pool_dir / 'w.json'}" in err and "too large to normalise" in err
    assert not (pool_dir / "sel").exists()
