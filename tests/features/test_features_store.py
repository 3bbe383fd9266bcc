"""Store: resume after a crash gives identical results; grown pools embed only new images; dedup."""

import json
import shutil

import numpy as np
import pytest

from presel.errors import PreselError
from presel.features.extract import EmbedConfig, embed_pool
from presel.features.store import FeatureStore
from presel.io.features import load_features
from presel.io.manifest import read_pool


def _cfg(model, **kw):
    base = dict(model=str(model), batch_size=2, workers=0, shard_size=3, progress=False)
    base.update(kw)
    return EmbedConfig(**base)


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_resume_after_crash_is_identical(tiny_dinov2, tmp_path, monkeypatch, write_pool):
    names = [f"i{i}.png" for i in range(8)]  # 3 shards: 3 + 3 + 2
    pool = read_pool(write_pool(tmp_path, names))
    ref = embed_pool(pool, tmp_path / "ref", _cfg(tiny_dinov2))
    assert ref["shards_now"] == 3

    real = FeatureStore.write_shard
    calls = []

    def crash_after_first(self, *a, **kw):
        if calls:
            raise RuntimeError("simulated kill")
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(FeatureStore, "write_shard", crash_after_first)
    with pytest.raises(RuntimeError, match="simulated kill"):
        embed_pool(pool, tmp_path / "run", _cfg(tiny_dinov2))
    monkeypatch.setattr(FeatureStore, "write_shard", real)
    done = sorted(p.name for p in (tmp_path / "run/shards").iterdir())
    assert done == ["shard-000000.json", "shard-000000.npy"]
    with pytest.raises(PreselError, match="incomplete"):
        load_features(tmp_path / "run")

    again = embed_pool(pool, tmp_path / "run", _cfg(tiny_dinov2))
    assert again["embedded_now"] == 5 and again["reused"] == 3
    assert _files(tmp_path / "ref") == _files(tmp_path / "run")


def test_resume_same_settings_byte_identical(tiny_dinov2, tmp_path, monkeypatch, write_pool):
    pool = read_pool(write_pool(tmp_path, [f"i{i}.png" for i in range(7)]))
    embed_pool(pool, tmp_path / "ref", _cfg(tiny_dinov2))
    real = FeatureStore.write_shard
    n = []

    def crash(self, *a, **kw):
        if len(n) == 2:
            raise KeyboardInterrupt
        n.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(FeatureStore, "write_shard", crash)
    with pytest.raises(KeyboardInterrupt):
        embed_pool(pool, tmp_path / "run", _cfg(tiny_dinov2))
    monkeypatch.setattr(FeatureStore, "write_shard", real)
    embed_pool(pool, tmp_path / "run", _cfg(tiny_dinov2))
    assert _files(tmp_path / "ref") == _files(tmp_path / "run")


def test_grown_pool_embeds_only_new_images(tiny_dinov2, tmp_path, write_pool):
    names = [f"i{i}.png" for i in range(4)]
    pool = read_pool(write_pool(tmp_path, names))
    first = embed_pool(pool, tmp_path / "feats", _cfg(tiny_dinov2))
    assert first["embedded_now"] == 4
    before = load_features(tmp_path / "feats")
    old = before.rows(np.arange(4))
    pool2 = read_pool(write_pool(tmp_path, names + ["new0.png", "new1.png"]))
    second = embed_pool(pool2, tmp_path / "feats", _cfg(tiny_dinov2))
    assert second["embedded_now"] == 2 and second["reused"] == 4
    fm = load_features(tmp_path / "feats")
    assert set(fm.ids) == {f"imgs/{n}" for n in names + ["new0.png", "new1.png"]}
    idx = fm.index
    assert np.array_equal(fm.rows(np.array([idx[f"imgs/{n}"] for n in names])), old)
    # the new images equal a fresh single run over the grown pool
    embed_pool(pool2, tmp_path / "fresh", _cfg(tiny_dinov2))
    fresh = load_features(tmp_path / "fresh")
    fi = fresh.index
    for k in fm.ids:
        assert np.array_equal(fm.rows(np.array([idx[k]])), fresh.rows(np.array([fi[k]])))
    third = embed_pool(pool2, tmp_path / "feats", _cfg(tiny_dinov2))
    assert third["embedded_now"] == 0 and third["shards_now"] == 0


def test_dedup_by_key_and_content(tiny_dinov2, tmp_path, write_pool):
    extra = [{"id": "same-path", "image": "imgs/./i0.png", "task": "u"},
             {"id": "copy", "image": "imgs/copy_of_i1.png", "task": "u"},
             {"id": "copy2", "image": "imgs/sub/../copy_of_i1.png", "task": "v"}]
    pool_path = write_pool(tmp_path, ["i0.png", "i1.png", "i2.png"], extra)
    shutil.copy(tmp_path / "imgs/i1.png", tmp_path / "imgs/copy_of_i1.png")
    pool = read_pool(pool_path)
    stats = embed_pool(pool, tmp_path / "feats", _cfg(tiny_dinov2, store_dtype="float32"))
    assert stats["records"] == 6 and stats["distinct_images"] == 4
    assert stats["distinct_contents"] == 3 and stats["content_duplicates"] == 1
    assert stats["embedded_now"] == 3 and stats["store_vectors"] == 3
    fm = load_features(tmp_path / "feats")
    assert sorted(fm.ids) == ["imgs/copy_of_i1.png", "imgs/i0.png", "imgs/i1.png", "imgs/i2.png"]
    i = fm.index
    v = fm.rows(np.array([i["imgs/i1.png"], i["imgs/copy_of_i1.png"], i["imgs/i0.png"]]))
    assert np.array_equal(v[0], v[1]) and not np.array_equal(v[0], v[2])
    # every record finds its feature by image key
    for r in pool.records:
        assert r.image_key in i
    # a later pool adding another copy of known content embeds nothing
    shutil.copy(tmp_path / "imgs/i2.png", tmp_path / "imgs/later.png")
    pool2 = read_pool(write_pool(tmp_path, ["i0.png", "i1.png", "i2.png", "later.png"], extra))
    st2 = embed_pool(pool2, tmp_path / "feats", _cfg(tiny_dinov2, store_dtype="float32"))
    assert st2["embedded_now"] == 0
    fm2 = load_features(tmp_path / "feats")
    j = fm2.index
    assert np.array_equal(fm2.rows(np.array([j["imgs/later.png"]])), fm2.rows(np.array([j["imgs/i2.png"]])))


def test_store_refuses_other_settings_and_foreign_dirs(tiny_dinov2, tmp_path, write_pool):
    pool = read_pool(write_pool(tmp_path, ["a.png"]))
    embed_pool(pool, tmp_path / "feats", _cfg(tiny_dinov2))
    with pytest.raises(PreselError, match="pooling='cls' \\(now 'mean'\\)"):
        embed_pool(pool, tmp_path / "feats", _cfg(tiny_dinov2, pooling="mean"))
    embed_pool(pool, tmp_path / "feats", _cfg(tiny_dinov2, pooling="mean"), overwrite=True)
    ident = json.loads((tmp_path / "feats/identity.json").read_text())
    assert ident["pooling"] == "mean"
    (tmp_path / "other").mkdir()
    (tmp_path / "other/x.txt").write_text("x")
    with pytest.raises(PreselError, match="not a presel feature store"):
        embed_pool(pool, tmp_path / "other", _cfg(tiny_dinov2))
    with pytest.raises(PreselError, match="refusing to delete"):
        embed_pool(pool, tmp_path / "other", _cfg(tiny_dinov2), overwrite=True)
    assert (tmp_path / "other/x.txt").exists()


def test_float16_default_and_float32_on_request(tiny_dinov2, tmp_path, write_pool):
    pool = read_pool(write_pool(tmp_path, ["a.png", "b.png"]))
    embed_pool(pool, tmp_path / "f16", _cfg(tiny_dinov2))
    embed_pool(pool, tmp_path / "f32", _cfg(tiny_dinov2, store_dtype="float32"))
    a16 = np.load(tmp_path / "f16/shards/shard-000000.npy", mmap_mode="r")
    a32 = np.load(tmp_path / "f32/shards/shard-000000.npy", mmap_mode="r")
    assert a16.dtype == np.float16 and a32.dtype == np.float32 and isinstance(a16, np.memmap)
    assert np.allclose(a16.astype(np.float32), a32, atol=1e-2, rtol=1e-2)
    man = json.loads((tmp_path / "f16/manifest.json").read_text())
    assert man["dtype"] == "float16" and man["ids"] == "image_key" and man["dim"] == 32


def test_one_writer_per_store(tmp_path):
    ident = {"model": "m", "store_dtype": "float16"}
    a = FeatureStore.open(tmp_path / "s", ident)
    try:
        with pytest.raises(PreselError, match="another `presel embed` is writing"):
            FeatureStore.open(tmp_path / "s", ident)
    finally:
        a.close()
    FeatureStore.open(tmp_path / "s", ident).close()


def test_select_leaves_out_images_the_store_rejected(tiny_dinov2, tmp_path, write_pool):
    """presel select on a store with rejected images: those records are left out and counted, not an error."""
    import json

    from presel.cli import main

    pool = write_pool(tmp_path, [f"{i}.png" for i in range(12)])
    (tmp_path / "imgs" / "5.png").write_bytes(b"not an image")
    assert main(["embed", "--pool", str(pool), "--model", str(tiny_dinov2), "--out", str(tmp_path / "feats"),
                 "--workers", "0", "--no-progress"]) == 0
    assert main(["select", "--pool", str(pool), "--features", str(tmp_path / "feats"), "--task-weights", "uniform",
                 "--budget-count", "4", "--out", str(tmp_path / "sel")]) == 0
    summary = json.loads((tmp_path / "sel" / "summary.json").read_text())
    assert summary["totals"]["rejected_images"] == 1 and summary["totals"]["rejected_records"] == 1
    assert summary["totals"]["distinct_images"] == 11 and summary["totals"]["total"] == 4
    chosen = [json.loads(line)["image"] for line in open(tmp_path / "sel" / "selection.jsonl")]
    assert "imgs/5.png" not in chosen
