"""presel deletes only what it can prove it wrote (presel.io.owned), everywhere it deletes."""

import json

import numpy as np
import pytest

from presel.errors import PreselError
from presel.features.store import FeatureStore
from presel.io.owned import check_deletable, remove_owned, written_by_presel


def test_owned_rule(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    (user / "config.json").write_text('{"model_type": "llama"}')  # a config.json that is not presel's
    with pytest.raises(PreselError, match=f"--out {user} exists and was not written by presel"):
        remove_owned(user)
    assert (user / "notes.txt").read_text() == "mine" and not written_by_presel(user)
    link = tmp_path / "link"
    link.symlink_to(user)
    with pytest.raises(PreselError, match="is a link"):
        remove_owned(link)
    assert (user / "notes.txt").exists()
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "config.json").write_text(json.dumps({"stage": "select", "environment": {}}))
    with pytest.raises(PreselError):  # only the stage marker counts where the caller says so
        check_deletable(ours, only=(".presel-stage.json",))
    remove_owned(ours)
    assert not ours.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    remove_owned(empty)
    assert not empty.exists()
    remove_owned(user, started=True)  # the caller's own record proves it
    assert not user.exists()


def test_embed_overwrite_takes_the_lock_before_deleting(tmp_path):
    root = tmp_path / "feats"
    ident = {"model": "m", "dim": 2}
    writer = FeatureStore.open(root, ident)  # another `presel embed` writing this store
    (root / "shards" / "shard-00000.npy").write_bytes(b"data")
    before = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    with pytest.raises(PreselError, match=f"{root}: another `presel embed` is writing"):
        FeatureStore.open(root, {"model": "other", "dim": 2}, overwrite=True)
    after = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    assert after == before and (root / ".lock").exists()
    writer.close()
    store = FeatureStore.open(root, {"model": "other", "dim": 2}, overwrite=True)  # the writer is done: allowed
    assert json.loads((root / "identity.json").read_text())["model"] == "other"
    assert not (root / "shards" / "shard-00000.npy").exists()
    store.close()


def test_embed_overwrite_refuses_a_folder_that_is_not_a_store(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    np.save(root / "my_own_features.npy", np.zeros(3))
    with pytest.raises(PreselError, match=f"--out {root} exists, is not empty and is not a presel feature store"):
        FeatureStore.open(root, {"model": "m"}, overwrite=True)
    assert (root / "my_own_features.npy").is_file()
