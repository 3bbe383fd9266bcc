"""The report's near-duplicates section (the `dedup` stage of `presel run`) and thumbnails opened through
presel.io.sources (images inside a Parquet table, refused or unreadable images as placeholders)."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from presel.errors import PreselError
from presel.io.sources import locate
from presel.report.data import RunOutputs, read_dedup
from presel.report.html import build_report
from presel.report.view import View


def _section(text: str, sid: str) -> str:
    return re.search(rf'<section id="{sid}".*?</section>', text, re.S).group(0)


def _status(text: str, sid: str) -> str:
    return re.search(rf'<section id="{sid}"[^>]*data-status="([^"]*)"', text).group(1)


def _planted_run(root: Path, tiny_dinov2: Path) -> Path:
    """12 random images in two tasks plus near-copies (one pixel changed) of images 1 and 7; embed, dedup,
    select through `presel run`."""
    from presel.pipeline import Pipeline, RunConfig

    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(12):
        task = "alpha" if i < 6 else "beta"
        a = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(a).save(root / f"img/{i}.png")
        rows.append({"id": f"r{i}", "picture": f"img/{i}.png", "task": task})
        if i in (1, 7):
            a[0, 0] = (a[0, 0].astype(int) + 1) % 256
            Image.fromarray(a).save(root / f"img/{i}-copy.png")
            rows.append({"id": f"r{i}-copy", "picture": f"img/{i}-copy.png", "task": task})
    (root / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"out": "run", "pool": {"path": "pool.jsonl", "image_column": "picture"},
           "embed": {"model": str(tiny_dinov2), "batch_size": 8, "workers": 0},
           "dedup": {"threshold": 0.999, "threads": 1},
           "select": {"budget": 1.0, "seed": 0, "task_weights": "uniform", "images_per_cluster": 4}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    Pipeline(RunConfig.load(root / "config.yaml"), log=lambda s: None).run()
    return root / "run"


def test_near_duplicates_section_from_a_run_with_planted_copies(tmp_path, tiny_dinov2):
    run = _planted_run(tmp_path, tiny_dinov2)
    summary = json.loads((run / "dedup" / "summary.json").read_text())
    assert summary["groups"] >= 2 and summary["dropped"] >= 2
    text = build_report(run).read_text(encoding="utf-8")
    assert _status(text, "neardup") == "ok"
    sec = _section(text, "neardup")
    nums = dict(re.findall(r"<tr><td>([^<]*?)(?: \(.*?\))?</td><td class=\"num\">([^<]*)</td></tr>", sec))
    assert nums["groups"] == str(summary["groups"]) and nums["kept"] == str(summary["kept"])
    assert nums["dropped"] == str(summary["dropped"]) and nums["images in groups"] == str(summary["images_in_groups"])
    assert re.search(rf"near-duplicate pairs .*?<td class=\"num\">{summary['pairs']}</td>", sec)
    assert re.search(r"selection: near-copies dropped</td><td class=\"num\">2</td>", sec)
    assert "selection: images identical to another" in sec
    groups = pq.read_table(run / "dedup" / "groups.parquet").to_pylist()
    shown = [g for g in groups if g["group"] < 8]
    # every grouped image is an embedded thumbnail; the kept one of each group is marked
    assert sec.count('<img src="data:image/jpeg;base64,') == len(shown) and "image<br>missing" not in sec
    assert sec.count('<figure class="sel"') == len({g["group"] for g in shown}) and sec.count("kept ✓") == sec.count(
        '<figure class="sel"')
    for g in shown:
        assert f'title="{g["key"]}"' in sec
        if not g["keep"]:
            assert f'{g["sim_to_kept"]:.4f}' in sec
        assert g["tasks"] in sec
    assert 'title="img/1-copy.png"' in sec and 'title="img/7-copy.png"' in sec


def test_dedup_reader_none_without_the_stage_and_names_a_malformed_file(tmp_path):
    assert RunOutputs(tmp_path).dedup is None
    d = tmp_path / "dedup"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"images": 3, "pairs": 1, "groups": 1, "images_in_groups": 2,
                                                "dropped": 1, "kept": 2, "largest_group": 2, "threshold": 0.9,
                                                "scope": "global"}))
    with pytest.raises(PreselError, match=re.escape(str(d / "groups.parquet"))):
        read_dedup(d)
    pq.write_table(pa.table({"group": [0, 0], "key": ["a.png", "b.png"]}), d / "groups.parquet")
    with pytest.raises(PreselError, match=re.escape(str(d / "groups.parquet")) + ": missing column"):
        read_dedup(d)
    pq.write_table(pa.table({"group": [0, 0], "key": ["a.png", "b.png"], "keep": [True, False], "size": [2, 2],
                             "sim_to_kept": [1.0, 0.95], "tasks": ["t", "t"]}), d / "groups.parquet")
    got = read_dedup(d)
    assert (got.pairs, got.groups, got.dropped, got.kept) == (1, 1, 1, 2) and got.rows.keep == [True, False]
    (d / "summary.json").write_text(json.dumps({"images": 3, "pairs": 1}))
    out = RunOutputs(tmp_path)
    assert out.dedup is None and f"{d / 'summary.json'}: missing 'groups'" in out.errors["dedup"]
    text = build_report(tmp_path).read_text(encoding="utf-8")
    assert _status(text, "neardup") == "not-run" and "missing &#39;groups&#39;" in _section(text, "neardup")


def _png(i: int) -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(b, format="PNG")
    return b.getvalue()


def test_thumbnails_from_a_parquet_bytes_pool(tmp_path):
    """A pool whose images live in a Parquet column: the gallery shows them; refused, absent and undecodable
    images are placeholders."""
    from presel.io.features import FeatureMatrix
    from presel.io.manifest import read_pool
    from presel.selection.select import SelectConfig, select_to_dir

    n = 12
    root = tmp_path / "pool"
    root.mkdir()
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(n)], "task": ["a"] * 6 + ["b"] * 6,
                             "image": [{"bytes": _png(i), "path": f"orig/{i}.png"} for i in range(n)]}),
                   root / "pool.parquet")
    pool = read_pool(root / "pool.parquet")
    keys = [r.image for r in pool.records]
    assert keys[3] == "parquet:pool.parquet#image/3"
    fm = FeatureMatrix([(keys, np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32))], source="synthetic")
    select_to_dir(pool, fm, None, None, SelectConfig(budget=0.5, seed=0, task_weights="uniform",
                                                     images_per_cluster=3), root / "run" / "selection")
    gallery = _section(build_report(root / "run").read_text(encoding="utf-8"), "gallery")
    assert 'data-status="ok"' in gallery and "image<br>missing" not in gallery
    assert gallery.count('<img src="data:image/jpeg;base64,') == gallery.count("<figure") > 0

    v = View(RunOutputs(root / "run"))
    uri = v.thumbnail("parquet:pool.parquet#image/3")
    thumb = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert thumb.size == (40, 30)  # the cell's 40x30 picture, not a placeholder
    (tmp_path / "other").mkdir()
    pq.write_table(pa.table({"image": [_png(0)]}), tmp_path / "other" / "out.parquet")
    outside = "parquet:../other/out.parquet#image/0"
    with pytest.raises(PreselError, match="outside the image root"):
        locate(outside, root)
    (root / "run" / "notimg.bin").write_bytes(b"not an image")
    pq.write_table(pa.table({"image": [b"not an image"]}), root / "bad.parquet")
    for ref in (outside, "parquet:pool.parquet#image/99", "parquet:pool.parquet#nocolumn/0",
                "parquet:bad.parquet#image/0", "parquet:missing.parquet#image/0", "run/notimg.bin"):
        assert v.thumbnail(ref) is None, ref
