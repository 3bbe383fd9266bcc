"""A damaged finished feature store: select and embed name the damaged file and the fix; embed --repair re-embeds
only what is damaged and gives the same store; a shard swapped for another of the same shape is caught by its
checksum; a full disk is one error with the space needed."""

import errno
import json
import shutil

import numpy as np
import pytest

from presel.cli import main


@pytest.fixture
def store(tiny_dinov2, tmp_path, write_pool):
    pool = write_pool(tmp_path, [f"{i}.png" for i in range(8)])
    args = ["--pool", str(pool), "--model", str(tiny_dinov2), "--shard-size", "3", "--workers", "0",
            "--batch-size", "4", "--no-progress"]
    out = tmp_path / "feats"
    assert main(["embed", *args, "--out", str(out)]) == 0
    return out, args, pool


def _vectors(out):
    from presel.io.features import load_features

    fm = load_features(out)
    x = fm.rows(np.arange(len(fm)))
    return {k: x[i].tobytes() for i, k in enumerate(fm.ids)}


def _select(out, pool, tmp_path):
    return main(["select", "--pool", str(pool), "--features", str(out), "--budget-count", "3", "--task-weights",
                 "uniform", "--images-per-cluster", "3", "--out", str(tmp_path / "sel")])


def _truncate(p):
    p.write_bytes(p.read_bytes()[:100])


def _swap(p):
    other = p.with_name("shard-000001.npy")
    p.write_bytes(other.read_bytes())  # same shape (3 x d), other vectors


def _swap_keep_mtime(p):
    shutil.copy2(p.with_name("shard-000001.npy"), p)  # cp -p: the other shard's bytes and time


def _flip_keep_mtime(p):
    import os

    st = p.stat()
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF  # one value changed in place, modification time set back
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1))


def _break(p):
    p.write_text("{broken")


@pytest.mark.parametrize("name, damage, needle", [
    ("shards/shard-000000.npy", _truncate, "truncated or not a .npy array"),
    ("shards/shard-000000.npy", _swap, "checksum differs"),
    ("shards/shard-000000.npy", _swap_keep_mtime, "checksum differs"),
    ("shards/shard-000000.npy", _flip_keep_mtime, "checksum differs"),
    ("shards/shard-000000.npy", lambda p: p.unlink(), "missing"),
    ("shards/shard-000000.json", _break, "unreadable shard marker"),
    ("manifest.json", _break, "unreadable"),
    ("index.parquet", _truncate, "unreadable"),
    ("rejects.jsonl", _break, "unreadable"),
])
def test_damage_is_named_and_repaired(store, tmp_path, capsys, name, damage, needle):
    out, args, pool = store
    before = _vectors(out)
    rejects = (out / "rejects.jsonl").read_bytes()
    damage(out / name)
    capsys.readouterr()
    assert _select(out, pool, tmp_path) == 2
    err = capsys.readouterr().err
    assert f"feature store {out} is damaged: {out / name}: {needle}" in err, err
    assert "--repair" in err and "--overwrite" in err and "Traceback" not in err
    assert main(["embed", *args, "--out", str(out)]) == 2  # embed refuses too, naming the same file
    err = capsys.readouterr().err
    assert str(out / name) in err and "--repair" in err
    assert main(["embed", *args, "--out", str(out), "--repair"]) == 0
    captured = capsys.readouterr()
    if name.startswith("shards/"):
        assert "embedded 3 new images" in captured.out  # only the damaged shard's images
    else:
        assert "embedded 0 new images" in captured.out
    assert _vectors(out) == before and (out / "rejects.jsonl").read_bytes() == rejects  # the same vectors per image
    assert _select(out, pool, tmp_path) == 0


def test_deleted_shard_files_and_broken_identity(store, tmp_path, capsys):
    out, args, pool = store
    (out / "shards" / "shard-000002.npy").unlink()
    (out / "shards" / "shard-000002.json").unlink()
    assert _select(out, pool, tmp_path) == 2
    assert "listed in manifest.json but deleted" in capsys.readouterr().err
    assert main(["embed", *args, "--out", str(out), "--repair"]) == 0
    capsys.readouterr()
    (out / "identity.json").write_text("{")
    assert main(["embed", *args, "--out", str(out), "--repair"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'identity.json'}: unreadable" in err and "--overwrite" in err
    assert main(["embed", *args, "--out", str(out), "--overwrite"]) == 0  # manifest.json proves the store is presel's
    capsys.readouterr()
    (out / "identity.json").unlink()
    for cmd in (["embed", *args, "--out", str(out)], ["select", "--pool", str(pool), "--features", str(out),
                                                     "--budget-count", "3", "--task-weights", "uniform",
                                                     "--out", str(tmp_path / "sel")]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert f"{out / 'identity.json'}: missing" in err and "--overwrite" in err, err


def test_full_disk_during_embed(tiny_dinov2, tmp_path, write_pool, monkeypatch, capsys):
    from presel.features import store as store_mod

    pool = write_pool(tmp_path, [f"{i}.png" for i in range(6)])
    real = store_mod.FeatureStore.write_shard
    calls = []

    def full(self, index, *a, **kw):
        calls.append(index)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, index, *a, **kw)

    monkeypatch.setattr(store_mod.FeatureStore, "write_shard", full)
    out = tmp_path / "feats"
    rc = main(["embed", "--pool", str(pool), "--model", str(tiny_dinov2), "--shard-size", "2", "--workers", "0",
               "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and f"{out}: no space left on the device while embedding" in err
    assert "MiB free; about" in err and "more needed for 4 images" in err and "Traceback" not in err
    assert shutil.disk_usage(tmp_path).free > 0
    marker = json.loads((out / "shards" / "shard-000000.json").read_text())
    assert marker["rows"] == 2 and len(marker["sha256"]) == 64
    assert np.load(out / "shards" / "shard-000000.npy").shape[0] == 2


def test_full_disk_while_a_shard_file_is_written(tiny_dinov2, tmp_path, write_pool, monkeypatch, capsys):
    """ENOSPC from the file system (here: fsync of the shard's temporary file), not from presel's own code."""
    import os

    pool = write_pool(tmp_path, [f"{i}.png" for i in range(4)])
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".npy") or ".shard-" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "feats"
    rc = main(["embed", "--pool", str(pool), "--model", str(tiny_dinov2), "--workers", "0", "--no-progress",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and f"{out}: no space left on the device while embedding" in err and "more needed" in err, err
    assert not any(p.name.endswith(".npy") for p in (out / "shards").iterdir())  # no half-written shard
