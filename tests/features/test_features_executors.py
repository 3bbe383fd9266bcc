"""Ray executor equals the local one; ONNX backend equals the HF one; the CLI writes what select reads."""

import json

import numpy as np
import pytest

from presel.features.extract import EmbedConfig, embed_pool
from presel.io.features import load_features
from presel.io.manifest import read_pool


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_ray_executor_equals_local(tiny_dinov2, tmp_path, write_pool):
    ray = pytest.importorskip("ray")
    extra = [{"id": "bad", "image": "imgs/bad.png", "task": "t"}, {"id": "gone", "image": "imgs/gone.png", "task": "t"}]
    pool_path = write_pool(tmp_path, [f"i{i}.png" for i in range(7)], extra)
    (tmp_path / "imgs/bad.png").write_bytes(b"\x89PNG not really")
    pool = read_pool(pool_path)
    kw = dict(model=str(tiny_dinov2), batch_size=2, workers=2, shard_size=3, progress=False)
    embed_pool(pool, tmp_path / "local", EmbedConfig(**kw))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        st = embed_pool(pool, tmp_path / "ray", EmbedConfig(executor="ray", **kw))
    finally:
        ray.shutdown()
    assert st["embedded_now"] == 7 and st["rejected_images"] == 2
    a, b = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert a.keys() == b.keys()
    for k in a:
        if k != "config.json":  # records executor=ray
            assert a[k] == b[k], k


def test_onnx_backend_matches_hf_on_offline_dinov2(offline_dinov2, tmp_path, write_pool):
    pytest.importorskip("onnxruntime")
    pool = read_pool(write_pool(tmp_path, ["a.png", "b.png", "c.png"]))
    kw = dict(model=str(offline_dinov2), workers=0, store_dtype="float32", progress=False, batch_size=3)
    embed_pool(pool, tmp_path / "hf", EmbedConfig(**kw))
    embed_pool(pool, tmp_path / "onnx", EmbedConfig(backend="onnx", **kw))
    hf, ox = load_features(tmp_path / "hf"), load_features(tmp_path / "onnx")
    assert hf.ids == ox.ids and hf.dim == 384
    a, b = hf.rows(np.arange(3)), ox.rows(np.arange(3))
    assert np.abs(a - b).max() < 1e-3
    assert np.abs(a[0] - a[1]).max() > 0.1


def test_cli_embed_offline_model_small_images(offline_dinov2, tmp_path, write_pool, capsys):
    from presel.cli import main

    pool = write_pool(tmp_path, ["a.png", "b.png"], [{"id": "x", "image": "imgs/none.png", "task": "t"}])
    rc = main(["embed", "--pool", str(pool), "--model", "dinov2-small", "--out", str(tmp_path / "feats"),
               "--image-size", "112", "--workers", "1", "--batch-size", "2", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "embedded 2 new images" in out and "rejected 1 images" in out
    fm = load_features(tmp_path / "feats")
    assert fm.ids == ["imgs/a.png", "imgs/b.png"] and fm.dim == 384
    cfg = json.loads((tmp_path / "feats/config.json").read_text())
    assert cfg["config"]["model"] == "dinov2-small" and cfg["image_size"] == [112, 112]
    rc = main(["embed", "--pool", str(pool), "--model", "dinov2-small", "--out", str(tmp_path / "feats"),
               "--batch-size", "0"])
    assert rc == 2
    assert "batch_size=0" in capsys.readouterr().err
