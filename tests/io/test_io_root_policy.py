"""One inside-the-root policy for every image reference: plain paths, URLs, table rows and tar members
(``io.sources.locate`` sends local paths through ``io.paths.resolve_image``, symlinks resolved), and
generate refuses references that do not decode, recording them as failures."""

import io
import json
import tarfile

import numpy as np
import pytest

from presel.io import sources
from presel.io.paths import ImagePathRefused


def _png() -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(b, format="PNG")
    return b.getvalue()


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


@pytest.fixture(autouse=True)
def _fresh_caches():
    sources.clear_caches()
    yield
    sources.clear_caches()


def test_symlinks_out_of_the_root_are_refused_for_files_and_containers(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "x.png").write_bytes(_png())
    _tar(outside / "s.tar", {"k.png": _png()})
    (root / "link.png").symlink_to(outside / "x.png")
    (root / "s.tar").symlink_to(outside / "s.tar")
    (root / "ok.png").write_bytes(_png())
    for ref in ("link.png", "tar:s.tar#k.png"):
        with pytest.raises(ImagePathRefused, match="outside the image root: a symlink"):
            sources.locate(ref, root)
    assert sources.locate("ok.png", root) == str((root / "ok.png").resolve())
    with pytest.raises(ImagePathRefused, match="outside the image root"):
        sources.locate("s3://other/x.png", "s3://bucket/pre")


def test_check_decodes_reads_through_the_sources_layer(tmp_path):
    _tar(tmp_path / "s.tar", {"good.png": _png(), "bad.png": b"API_KEY=secret\n"})
    sources.check_decodes(sources.locate("tar:s.tar#good.png", tmp_path))
    with pytest.raises(ImagePathRefused, match="not an image"):
        sources.check_decodes(sources.locate("tar:s.tar#bad.png", tmp_path))
    with pytest.raises(ImagePathRefused, match="missing"):
        sources.check_decodes(sources.locate("tar:s.tar#absent.png", tmp_path))


def test_generate_records_non_decoding_tar_members_as_failures(tmp_path):
    from presel.generate.store import SelectionRow, refuse_unsafe

    _tar(tmp_path / "s.tar", {"good.png": _png(), "bad.png": b"not an image"})
    rows = [SelectionRow("g", "tar:s.tar#good.png", "t", "selected", 1),
            SelectionRow("b", "tar:s.tar#bad.png", "t", "selected", 2),
            SelectionRow("up", "tar:../s.tar#good.png", "t", "selected", 3)]
    out = tmp_path / "gen"
    out.mkdir()
    keep = refuse_unsafe(rows, tmp_path, out)
    assert [r.id for r in keep] == ["g"]
    fails = {f["id"]: f for f in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    assert set(fails) == {"b", "up"} and all(f["kind"] == "image" for f in fails.values())
    assert "not an image" in fails["b"]["error"] and "outside the image root" in fails["up"]["error"]
