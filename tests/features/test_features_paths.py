"""Embedding opens only images inside the image root: '..', absolute and symlinked-out paths are rejects."""

import json

from PIL import Image

from presel.features.extract import EmbedConfig, embed_pool
from presel.io.manifest import read_pool


def test_embed_rejects_paths_outside_the_image_root(tiny_dinov2, tmp_path, photo, write_pool):
    root = tmp_path / "pool"
    Image.fromarray(photo(7)).save(tmp_path / "outside.png")  # a real image, but not under the root
    (root / "imgs").mkdir(parents=True)
    (root / "imgs" / "link.png").symlink_to(tmp_path / "outside.png")
    extra = [{"id": "dotdot", "image": "../outside.png", "task": "t"},
             {"id": "abs", "image": str(tmp_path / "outside.png"), "task": "t"},
             {"id": "link", "image": "imgs/link.png", "task": "t"}]
    pool = read_pool(write_pool(root, ["a.png", "b.png"], extra))
    stats = embed_pool(pool, tmp_path / "feats", EmbedConfig(model=str(tiny_dinov2), batch_size=2, workers=0,
                                                             progress=False))
    rejects = {r["id"]: r["reason"] for r in map(json.loads, (tmp_path / "feats/rejects.jsonl").read_text().splitlines())}
    assert set(rejects) == {"dotdot", "abs", "link"}
    assert all(r.startswith("outside the image root") for r in rejects.values())
    assert "'..' path" in rejects["dotdot"] and "absolute" in rejects["abs"] and "symlink" in rejects["link"]
    assert stats["embedded_images"] == 2 and stats["rejected_images"] == 3


def test_embed_with_a_wrong_image_root_is_an_error(tiny_dinov2, tmp_path, capsys, write_pool):
    from presel.cli import main

    pool = write_pool(tmp_path / "pool", ["a.png", "b.png"])
    wrong = tmp_path / "elsewhere"
    wrong.mkdir()
    rc = main(["embed", "--pool", str(pool), "--image-root", str(wrong), "--model", str(tiny_dinov2),
               "--workers", "0", "--out", str(tmp_path / "feats")])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{pool}: none of the 2 images could be read (2 missing" in err
    assert f"check --image-root (now {wrong})" in err and "id r0: imgs/a.png" in err
