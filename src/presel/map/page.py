"""``presel map RUN``: RUN/map/index.html, an offline interactive map of the pool, and its assets.

The page is plain HTML + one bundled script (``static/map.js``, no library) that draws every point on a
canvas; the data is ``assets/data.js`` (typed arrays as base64, ids and paths as text) and the thumbnails are
JPEG files in ``assets/thumbs/`` beside it. Nothing is loaded from the network: the page works from
``file://`` and from any static file server. The projection is cached in ``RUN/map/projection/``
(:mod:`presel.map.project`).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from presel.errors import PreselError
from presel.map.points import STATUS, Points, collect_points, feature_rows_fn, run_features
from presel.map.project import MapConfig, project


def _static(name: str) -> str:
    from importlib.resources import files

    return files("presel.map").joinpath("static", name).read_text(encoding="utf-8")


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _lines(values: list[str], what: str) -> str:
    bad = next((v for v in values if "\n" in v or "\r" in v), None)
    if bad is not None:
        raise PreselError(f"{what} {bad!r} contains a line break; the map lists one per line")
    return "\n".join(values)


def _thumb_name(image: str) -> str:
    return hashlib.sha1(image.encode("utf-8")).hexdigest()[:20]


def write_thumbnails(pts: Points, locate: Callable[[str], str | None], folder: Path, size: int, *,
                     progress: bool = True) -> list[str]:
    """A JPEG thumbnail per point under ``folder/<2 hex>/<name>.jpg`` (kept when it already exists: resumable);
    the names, ``""`` where the image is missing, refused or does not decode."""
    from tqdm import tqdm

    from presel.features.images import ImageRejected
    from presel.io.atomic import atomic_file
    from presel.io.sources import load_image

    names = []
    for image in tqdm(pts.image, desc="map: thumbnails", unit="img", disable=not progress, mininterval=1.0):
        name = _thumb_name(image)
        p = folder / name[:2] / f"{name}.jpg"
        if not p.is_file():
            loc = locate(image)
            if loc is None:
                names.append("")
                continue
            try:
                im = load_image(loc).convert("RGB")
            except (ImageRejected, PreselError, OSError, ValueError):
                names.append("")
                continue
            im.thumbnail((size, size))
            with atomic_file(p, "wb") as f:
                im.save(f, format="JPEG", quality=82)
        names.append(name)
    return names


def page_data(pts: Points, xy: np.ndarray, thumbs: list[str] | None, title: str) -> dict:
    cq = np.array([pts.quota.get((t, c), 0) for t, c in zip(pts.task, pts.cluster)], dtype=np.int32)
    weights = [None if w != w else w for w in pts.weights]
    return {"n": len(pts), "title": title, "x": _b64(xy[:, 0].astype(np.float32)), "y": _b64(xy[:, 1].astype(np.float32)),
            "task": _b64(np.asarray(pts.task, dtype=np.uint16)), "cluster": _b64(np.asarray(pts.cluster, dtype=np.int32)),
            "rank": _b64(np.asarray(pts.rank, dtype=np.int32)), "central": _b64(np.asarray(pts.central, dtype=np.float32)),
            "status": _b64(np.asarray(pts.status, dtype=np.uint8)), "group": _b64(np.asarray(pts.group, dtype=np.int32)),
            "cq": _b64(cq), "forced": _b64(np.asarray(pts.forced, dtype=np.uint8)), "ids": _lines(pts.id, "id"), "images": _lines(pts.image, "image path"),
            "also": "\n".join(pts.also), "kept": "\n".join(pts.kept),
            "thumbs": "\n".join(thumbs) if thumbs is not None else None,
            "tasks": pts.tasks, "weights": weights, "status_names": list(STATUS)}


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob: data:">
<title>presel map · {title}</title>
<script>window.onerror = function (m) {{ var r = document.documentElement; r.setAttribute("data-js-errors", String(+(r.getAttribute("data-js-errors") || 0) + 1)); r.setAttribute("data-js-error", String(m)); }};</script>
<style>
{css}
</style>
</head>
<body>
<div id="side">
<h1>presel map</h1>
<div class="sub">{title}</div>
<div class="sub">{subtitle}</div>
<table class="counts">
<tr><td>points</td><td class="num" id="n-points"></td></tr>
<tr><td>shown</td><td class="num" id="n-visible"></td></tr>
<tr><td>drawn in view</td><td class="num" id="n-drawn"></td></tr>
<tr><td>box / lasso</td><td class="num" id="n-chosen">0</td></tr>
</table>
<h2>Colour by</h2>
<select id="color">
<option value="status">selected / reference / not picked</option>
<option value="task">task</option>
<option value="cluster">cluster</option>
<option value="weight">task weight</option>
<option value="central">centrality</option>
<option value="group">near-duplicate group</option>
</select>
<div id="legend"></div>
<h2>Filter</h2>
<label>task <select id="f-task"><option value="">all tasks</option></select></label>
<label>cluster <input id="f-cluster" type="number" min="0" placeholder="any"></label>
<label>near-duplicate group <input id="f-group" type="number" min="0" placeholder="any"></label>
<label>centrality at least <input id="f-central" type="number" step="any" placeholder="any"></label>
<label>task weight at least <input id="f-weight" type="number" step="any" placeholder="any"></label>
<div id="f-status"></div>
<h2>Search</h2>
<input id="search" type="text" placeholder="id or path, then Enter">
<div class="sub" id="search-note"></div>
<h2>Select a region</h2>
<button id="m-pan" class="on">pan / click</button><button id="m-box">box</button><button id="m-lasso">lasso</button>
<div><button id="export-btn" disabled>export ids</button><button id="clear-btn">clear</button><button id="fit-btn">fit</button></div>
<div class="sub">The export is a text file of ids, one per line: <code>presel select --exclude FILE</code> leaves
them out, <code>--include FILE</code> forces them in.</div>
<div id="info">
<h2>Image</h2>
<div id="info-img"></div>
<table id="info-table"></table>
<div class="why" id="why"></div>
<button id="cluster-btn">cluster in pick order</button>
</div>
{problems}
</div>
<div id="main">
<canvas id="plot"></canvas><canvas id="overlay"></canvas>
<div id="tip"></div>
<div id="hint">wheel: zoom · drag: pan (or box / lasso) · click: details</div>
<div id="cluster"><button id="cluster-close" style="float:right">close</button><h3 id="cluster-title"></h3><div class="grid" id="cluster-grid"></div></div>
</div>
<pre id="export"></pre>
<script src="assets/data.js"></script>
<script>
{js}
</script>
</body>
</html>
"""


def render_page(title: str, subtitle: str, problems: list[str]) -> str:
    probs = "".join(f"<div class=\"why\">{html.escape(p)}</div>" for p in problems)
    return PAGE.format(title=html.escape(title), subtitle=html.escape(subtitle), css=_static("map.css"),
                       js=_static("map.js"), problems=f"<h2>Notes</h2>{probs}" if probs else "")


def data_script(data: dict) -> str:
    return "window.PRESEL_MAP_DATA = " + json.dumps(data, ensure_ascii=True, separators=(",", ":")).replace("</", "<\\/") + ";\n"


def load_points(run_dir: Path, features: str | os.PathLike | None = None,
                feature_ids: str | os.PathLike | None = None) -> tuple[Any, Any, Points]:
    """(the run's outputs, its FeatureMatrix, the points of the map)."""
    from presel.report.data import RunOutputs

    if not run_dir.is_dir():
        raise PreselError(f"{run_dir}: run directory not found; pass the --out folder of presel run / presel select")
    runout = RunOutputs(run_dir)
    if runout.assignments is None:
        raise PreselError(runout.errors.get("assignments") or f"{run_dir}: no selection/assignments.parquet; run presel "
                          "select (or presel run) into this run directory first")
    if features is not None:
        from presel.io.features import load_features

        fm = load_features(features, feature_ids)
    else:
        fm = run_features(runout, run_dir)
    return runout, fm, collect_points(runout, fm)


def build_map(run_dir: str | os.PathLike, cfg: MapConfig | None = None, *, out: str | os.PathLike | None = None,
              features: str | os.PathLike | None = None, feature_ids: str | os.PathLike | None = None,
              image_root: str | os.PathLike | None = None, title: str | None = None, progress: bool = True,
              log: Callable[[str], None] = print) -> Path:
    """Write the map of ``run_dir`` into ``out`` (default ``run_dir/map``); return the path of its index.html."""
    from presel.io.atomic import atomic_file
    from presel.report.view import View

    cfg = cfg or MapConfig()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PreselError(f"{run_dir}: run directory not found; pass the --out folder of presel run / presel select")
    if image_root is not None and not Path(image_root).is_dir():
        raise PreselError(f"--image-root {image_root}: folder not found")
    out_dir = Path(out) if out is not None else run_dir / "map"
    if out_dir.exists() and not out_dir.is_dir():
        raise PreselError(f"--out {out_dir} is a file; name a folder for the map")
    runout, fm, pts = load_points(run_dir, features, feature_ids)
    problems = list(runout.problems)
    if pts.missing_features:
        problems.append(f"{pts.missing_features} image(s) of the selection have no features and are not drawn")
    xy = project(pts.id, feature_rows_fn(fm, pts.feature_row), fm.dim, out_dir / "projection", cfg,
                 progress=progress, log=log)
    thumbs = None
    if cfg.thumb_size > 0:
        view = View(runout, image_root=Path(image_root) if image_root else None)
        thumbs = write_thumbnails(pts, view.image_locator, out_dir / "assets" / "thumbs", cfg.thumb_size,
                                  progress=progress)
        missing = sum(1 for t in thumbs if not t)
        if missing:
            problems.append(f"{missing} of {len(thumbs)} images could not be found or opened under the run's image "
                            "root (shown as placeholders); pass --image-root")
    title = title or run_dir.resolve().name
    method = f"UMAP (n_neighbors={cfg.n_neighbors}, min_dist={cfg.min_dist}, seed={cfg.seed})" \
        if cfg.method == "umap" else "PCA"
    subtitle = f"{len(pts):,} images · {method} of {fm.dim}-d features"
    with atomic_file(out_dir / "assets" / "data.js") as f:
        f.write(data_script(page_data(pts, xy, thumbs, title)))
    index = out_dir / "index.html"
    with atomic_file(index) as f:
        f.write(render_page(title, subtitle, problems))
    return index
