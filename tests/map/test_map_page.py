"""presel map of a real tiny run: the page in headless Chromium (offline), its counts, the box export round trip
to `presel select --exclude`, the cached projection and the report's link."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from presel.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: run `bash scripts/system-deps.sh`")
URL = re.compile(r"\b(?:https?|wss?|ftp)://", re.I)


def chromium(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    """Headless Chromium with every host unresolvable (no network at view time)."""
    prof = tmp / "profile"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={prof}", "--enable-logging=stderr", "--v=0",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1280,800", "--virtual-time-budget=10000",
             *extra, url]
    return subprocess.run([CHROMIUM, *flags], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HOME": str(tmp)})


def root_attrs(dom: str) -> dict[str, str]:
    m = re.search(r"<html([^>]*)>", dom)
    return dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(1))) if m else {}


@pytest.fixture(scope="module")
def built(tiny_run):
    assert main(["map", str(tiny_run), "--no-progress", "--n-neighbors", "5"]) == 0
    return tiny_run / "map" / "index.html"


def test_the_page_is_self_contained(built):
    page = built.read_text(encoding="utf-8")
    data = (built.parent / "assets" / "data.js").read_text(encoding="utf-8")
    assert not URL.search(page) and not URL.search(data)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    srcs = re.findall(r'<script[^>]*\bsrc="([^"]+)"', page)
    assert srcs == ["assets/data.js"]  # the one local data file; the code is inline
    assert "default-src 'none'" in page  # the page may not fetch anything from anywhere
    thumbs = list((built.parent / "assets" / "thumbs").rglob("*.jpg"))
    assert thumbs and all(Image.open(t).size[0] <= 96 for t in thumbs)


@needs_chromium
def test_chromium_draws_every_pool_image_and_the_selection(built, tiny_run, tmp_path):
    summary = json.loads((tiny_run / "selection" / "summary.json").read_text())
    selection = pq.read_table(tiny_run / "selection" / "selection.parquet").to_pylist()
    res = chromium(built.resolve().as_uri(), tmp_path, "--dump-dom")
    a = root_attrs(res.stdout)
    assert a.get("data-loaded") == "yes", res.stderr[-2000:]
    assert "data-js-errors" not in a, a
    assert [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln] == []
    assert int(a["data-points"]) == summary["totals"]["distinct_images"]
    assert int(a["data-drawn"]) == summary["totals"]["distinct_images"]  # every point is drawn in the first view
    assert int(a["data-selected"]) == summary["totals"]["selected"] == sum(r["source"] == "selected" for r in selection)
    assert int(a["data-selected"]) + int(a["data-reference"]) == len(selection)

    # filters: only the picks of the first task; a centrality floor keeps fewer of them
    tasks = list(dict.fromkeys(r["task"] for r in pq.read_table(tiny_run / "selection" / "assignments.parquet")
                               .to_pylist()))
    first = sum(r["source"] == "selected" and r["task"] == tasks[0] for r in selection)
    a = root_attrs(chromium(built.resolve().as_uri() + "#filter=f-task=0;f-st-0=off;f-st-2=off;f-st-3=off", tmp_path,
                            "--dump-dom").stdout)
    assert int(a["data-visible"]) == int(a["data-drawn"]) == first
    scores = sorted(r["nc_score"] for r in selection if r["source"] == "selected" and r["task"] == tasks[0])
    floor = scores[first // 2] - 1e-6  # float32 in the page
    a = root_attrs(chromium(built.resolve().as_uri() + f"#filter=f-task=0;f-st-0=off;f-central={floor}", tmp_path,
                            "--dump-dom").stdout)
    assert int(a["data-visible"]) == sum(v >= floor for v in scores) < first  # reference images have no centrality

    shot = tmp_path / "map.png"
    chromium(built.resolve().as_uri() + "#show=" + selection[-1]["id"], tmp_path, f"--screenshot={shot}")
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (800, 1280) and img.std() > 20
    docs = os.environ.get("PRESEL_MAP_SCREENSHOT")  # set to refresh the README's picture (docs/img/map.png)
    if docs:
        shutil.copy(shot, docs)


@needs_chromium
def test_a_box_export_goes_back_to_presel_select(built, tiny_run, tmp_path):
    res = chromium(built.resolve().as_uri() + "#box=0,0,0.5,1", tmp_path, "--dump-dom")
    a = root_attrs(res.stdout)
    assert a.get("data-loaded") == "yes" and "data-js-errors" not in a, res.stderr[-2000:]
    text = re.search(r'<pre id="export">(.*?)</pre>', res.stdout, re.S).group(1)
    ids = [x for x in text.split("\n") if x]
    assert 0 < len(ids) == int(a["data-chosen"]) < int(a["data-points"])
    # a lasso along the same rectangle (5 corners: the polygon test) exports the same ids; a triangle inside it fewer
    res = chromium(built.resolve().as_uri() + "#lasso=0,0,0.25,0,0.5,0,0.5,1,0,1", tmp_path, "--dump-dom")
    assert re.search(r'<pre id="export">(.*?)</pre>', res.stdout, re.S).group(1) == text
    res = chromium(built.resolve().as_uri() + "#lasso=0,0,0.5,0,0,1,0,0.5,0,0.2", tmp_path, "--dump-dom")
    assert 0 < int(root_attrs(res.stdout)["data-chosen"]) < len(ids)
    ref = {r["id"] for r in (json.loads(x) for x in (tiny_run / "reference" / "reference.jsonl").read_text().splitlines())}
    drop = tmp_path / "drop.txt"
    drop.write_text("".join(i + "\n" for i in ids if i not in ref))
    cfg = json.loads((tiny_run / "selection" / "config.json").read_text())
    out = tmp_path / "sel"
    argv = ["select", "--pool", cfg["inputs"]["pool"], "--image-root", cfg["inputs"]["image_root"],
            "--features", str(tiny_run / "features"), "--reference", str(tiny_run / "reference" / "reference.jsonl"),
            "--weights", str(tiny_run / "weights" / "task_weights.json"), "--budget", "0.15", "--exclude", str(drop),
            "--out", str(out)]
    assert main(argv) == 0
    picked = {r["id"] for r in pq.read_table(out / "selection.parquet").to_pylist()}
    assert not picked & set(drop.read_text().split())
    assert json.loads((out / "summary.json").read_text())["exclude"]["images"] == len(drop.read_text().split())


def test_projection_is_cached_and_deterministic(built, tiny_run, tmp_path):
    from presel.map import MapConfig, build_map

    proj = built.parent / "projection"
    xy = (proj / "xy.npy").read_bytes()
    data = (built.parent / "assets" / "data.js").read_bytes()
    stamp = (proj / "xy.npy").stat().st_mtime_ns
    build_map(tiny_run, MapConfig(n_neighbors=5), progress=False)  # same settings: the cached projection
    assert (proj / "xy.npy").stat().st_mtime_ns == stamp
    other = tmp_path / "again"
    build_map(tiny_run, MapConfig(n_neighbors=5), out=other, progress=False)  # from scratch: byte-identical
    assert (other / "projection" / "xy.npy").read_bytes() == xy
    assert (other / "assets" / "data.js").read_bytes() == data
    build_map(tiny_run, MapConfig(n_neighbors=5, seed=1), out=other, progress=False)  # a new key: recomputed
    assert (other / "projection" / "xy.npy").read_bytes() != xy


def test_the_report_links_to_the_map(built, tiny_run, tmp_path):
    from presel.report.html import build_report

    text = build_report(tiny_run, tmp_path / "r" / "report.html").read_text()
    href = re.search(r'<a id="map-link" href="([^"]+)"', text).group(1)
    assert (tmp_path / "r" / href).resolve() == built.resolve()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert 'id="map-link"' not in build_report(empty).read_text()


def test_errors(tmp_path, tiny_run, capsys):
    assert main(["map", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    assert main(["map", str(tmp_path / "run")]) == 2
    assert "no selection/assignments.parquet" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["map", str(tiny_run), "--method", "tsne"])
    assert main(["map", str(tiny_run), "--fit-sample", "5"]) == 2
    assert "fit_sample=5 must be an integer >= 100" in capsys.readouterr().err
    (tmp_path / "foreign" / "projection").mkdir(parents=True)
    (tmp_path / "foreign" / "projection" / "mine.txt").write_text("x")
    assert main(["map", str(tiny_run), "--out", str(tmp_path / "foreign"), "--method", "pca"]) == 2
    assert "not written by presel map" in capsys.readouterr().err
    assert (tmp_path / "foreign" / "projection" / "mine.txt").exists()


def test_fiftyone_samples_carry_the_run(built, tiny_run):
    from presel.map import MapConfig
    from presel.map.fiftyone import run_samples

    summary = json.loads((tiny_run / "selection" / "summary.json").read_text())
    samples, xy = run_samples(tiny_run, MapConfig(n_neighbors=5), progress=False)
    assert len(samples) == summary["totals"]["distinct_images"] == len(xy)
    assert sum(s["selected"] for s in samples) == summary["totals"]["selected"]
    assert sum(s["reference"] for s in samples) == summary["totals"]["reference"]
    assert np.array_equal(xy, np.load(built.parent / "projection" / "xy.npy"))  # the map's own projection
    feats = json.loads((tiny_run / "features" / "summary.json").read_text())
    assert {s["embedding"].shape for s in samples} == {(feats["dim"],)}
    assert all(Path(s["filepath"]).is_file() for s in samples)
    weights = {t: v["weight"] for t, v in summary["tasks"].items()}
    assert all(s["weight"] == pytest.approx(weights[s["task"]]) for s in samples)
    assert all((s["rank"] is None) == (s["reference"]) for s in samples)  # every other image has its cluster rank
    assert {t for s in samples for t in s["tags"]} == {"selected", "reference"}


def test_fiftyone_export(built, tiny_run, monkeypatch):
    import sys

    from presel.errors import PreselError
    from presel.map.fiftyone import export_fiftyone

    if "fiftyone" not in sys.modules:
        try:
            import fiftyone  # noqa: F401
        except ImportError:
            monkeypatch.setitem(sys.modules, "fiftyone", None)
            with pytest.raises(PreselError, match=r"pip install 'presel\[fiftyone\]'"):
                export_fiftyone(tiny_run)
            pytest.skip("fiftyone is not installed (optional extra 'fiftyone'); the export itself was not run")
    ds = export_fiftyone(tiny_run, "presel-test-map", overwrite=True, progress=False)
    summary = json.loads((tiny_run / "selection" / "summary.json").read_text())
    assert len(ds) == summary["totals"]["distinct_images"]
    assert len(ds.match_tags("selected")) == summary["totals"]["selected"]
    assert "presel_map" in ds.list_brain_runs()
    ds.delete()
