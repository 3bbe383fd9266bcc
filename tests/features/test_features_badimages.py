"""Every bad image kind: convertible ones become RGB and are embedded, the rest go to rejects.jsonl."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from presel.features.extract import EmbedConfig, embed_pool
from presel.features.images import ImageRejected, load_rgb
from presel.io.features import load_features
from presel.io.manifest import read_pool


def _make_images(d, photo):
    d.mkdir(parents=True, exist_ok=True)
    rgb = photo(0, (40, 30))
    ok = {}
    Image.fromarray(rgb).save(d / "rgb.jpg", quality=90)
    ok["rgb.jpg"] = None
    Image.fromarray(rgb).convert("L").save(d / "gray.png")
    ok["gray.png"] = "L"
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    ok["cmyk.jpg"] = "CMYK"
    pal = Image.fromarray(photo(1)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(d / "palette.png", transparency=0)
    ok["palette.png"] = "P"
    rgba = np.dstack([photo(2), np.full((30, 40), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(d / "alpha.png")
    ok["alpha.png"] = "RGBA"
    Image.fromarray(photo(3)).convert("LA").save(d / "gray_alpha.png")
    ok["gray_alpha.png"] = "LA"
    a16 = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
    Image.fromarray(a16).save(d / "deep16.png")  # 16-bit grayscale
    ok["deep16.png"] = "I;16"
    Image.fromarray(photo(4)).convert("1").save(d / "bilevel.png")
    ok["bilevel.png"] = "1"
    bad = {}
    (d / "empty.jpg").write_bytes(b"")
    bad["empty.jpg"] = "zero-byte"
    buf = io.BytesIO()
    Image.fromarray(photo(5, (200, 150))).save(buf, "JPEG", quality=95)
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    bad["truncated.jpg"] = "truncated"
    (d / "notes.jpg").write_text("this is not an image\n")
    bad["notes.jpg"] = "not an image"
    Image.fromarray(photo(6, (400, 300))).save(d / "bomb.png")  # over the pixel limit used below
    bad["bomb.png"] = "decompression bomb"
    bad["missing.jpg"] = "missing"
    return ok, bad


def test_modes_convert_to_rgb(tmp_path, photo):
    ok, _ = _make_images(tmp_path, photo)
    for name, mode in ok.items():
        if mode:
            assert Image.open(tmp_path / name).mode.startswith(mode[:1]), name
        img = load_rgb(tmp_path / name)
        assert img.mode == "RGB" and img.size == (40, 30), name
    deep = np.asarray(load_rgb(tmp_path / "deep16.png"))
    assert deep[0, 0].tolist() == [0, 0, 0] and deep[-1, -1].tolist() == [255, 255, 255]  # scaled, not clipped
    alpha = np.asarray(load_rgb(tmp_path / "alpha.png")).astype(int)
    expect = (photo(2).astype(int) * 128 + 255 * 127 + 127) // 255  # composited on white
    assert np.abs(alpha - expect).max() <= 1


@pytest.mark.parametrize("name,kind", [("empty.jpg", "zero-byte"), ("truncated.jpg", "truncated"),
                                       ("notes.jpg", "not an image"), ("missing.jpg", "missing")])
def test_load_rejects(tmp_path, photo, name, kind):
    _make_images(tmp_path, photo)
    with pytest.raises(ImageRejected) as e:
        load_rgb(tmp_path / name)
    assert e.value.reason.startswith(kind)


def test_bomb_rejected_without_decoding(tmp_path, photo):
    _make_images(tmp_path, photo)
    with pytest.raises(ImageRejected, match="decompression bomb: 400x300"):
        load_rgb(tmp_path / "bomb.png", max_pixels=100_000)


def test_pipeline_never_crashes_never_drops(tiny_dinov2, tmp_path, photo):
    ok, bad = _make_images(tmp_path / "imgs", photo)
    names = list(ok) + list(bad)
    recs = [{"id": f"r{i}", "image": f"imgs/{n}", "task": "t"} for i, n in enumerate(names)]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    pool = read_pool(tmp_path / "pool.jsonl")
    cfg = EmbedConfig(model=str(tiny_dinov2), batch_size=4, workers=2, max_image_pixels=100_000, shard_size=5,
                      progress=False)
    stats = embed_pool(pool, tmp_path / "feats", cfg)
    rejects = [json.loads(x) for x in (tmp_path / "feats/rejects.jsonl").read_text().splitlines()]
    got = {r["image"].split("/")[-1]: r["reason"] for r in rejects}
    assert set(got) == set(bad)
    for name, kind in bad.items():
        assert got[name].startswith(kind), (name, got[name])
    assert all(set(r) == {"id", "image", "reason"} for r in rejects)
    fm = load_features(tmp_path / "feats")
    assert sorted(fm.ids) == sorted(f"imgs/{n}" for n in ok)
    assert np.isfinite(fm.rows(np.arange(len(fm)))).all()
    assert stats["rejected_images"] == len(bad) and stats["embedded_images"] == len(ok)
    assert stats["embedded_images"] + stats["rejected_images"] == stats["distinct_images"] == len(names)
    from presel.features.store import rejected_images

    assert set(rejected_images(tmp_path / "feats")) == {f"imgs/{n}" for n in bad}
    summary = json.loads((tmp_path / "feats/summary.json").read_text())
    assert summary["reject_reasons"] == {k: 1 for k in bad.values()}
