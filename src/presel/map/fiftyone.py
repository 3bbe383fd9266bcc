"""``presel export --to fiftyone RUN``: the run as a FiftyOne dataset (optional extra ``fiftyone``).

One sample per point of the map (:mod:`presel.map.points`): ``filepath`` (the image under the run's image root),
``presel_id``, ``task``, ``cluster``, ``rank``, ``selected``, ``reference``, ``status``, ``weight`` (the task's),
``centrality``, ``duplicate_group``, the features as ``embedding``, and tags ``selected`` / ``reference`` /
``near-copy dropped``. The map's cached 2-D projection becomes the brain visualization ``brain_key``
(``fiftyone.brain.compute_visualization(points=...)``), so the App's embeddings panel shows the same picture as
``presel map`` and its lasso acts on the same samples.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from presel.errors import PreselError
from presel.map.points import STATUS


def run_samples(run_dir: str | os.PathLike, cfg=None, *, features: str | os.PathLike | None = None,
                feature_ids: str | os.PathLike | None = None, image_root: str | os.PathLike | None = None,
                progress: bool = True, log: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The samples' fields (plain dicts, ``embedding`` as float32 arrays) and the N x 2 projection."""
    from presel.map.page import load_points
    from presel.map.points import feature_rows_fn
    from presel.map.project import MapConfig, project
    from presel.report.view import View

    cfg = cfg or MapConfig()
    run_dir = Path(run_dir)
    runout, fm, pts = load_points(run_dir, features, feature_ids)
    rows = feature_rows_fn(fm, pts.feature_row)
    xy = project(pts.id, rows, fm.dim, run_dir / "map" / "projection", cfg, progress=progress, log=log)
    view = View(runout, image_root=Path(image_root) if image_root else None)
    emb = rows(np.arange(len(pts)))
    out = []
    for i in range(len(pts)):
        loc = view.image_locator(pts.image[i])
        root = view.image_roots()[0] if view.image_roots() else run_dir
        st = STATUS[pts.status[i]]
        c = pts.central[i]
        w = pts.weights[pts.task[i]]
        out.append({
            "filepath": str(Path(loc).resolve()) if loc else str((root / pts.image[i]).resolve()),
            "presel_id": pts.id[i], "task": pts.tasks[pts.task[i]], "cluster": pts.cluster[i] if pts.cluster[i] >= 0 else None,
            "rank": pts.rank[i] or None, "selected": st == "selected", "reference": st == "reference", "status": st,
            "weight": None if w != w else float(w), "centrality": None if c != c else float(c),
            "duplicate_group": pts.group[i] if pts.group[i] >= 0 else None, "embedding": emb[i],
            "tags": [st] if st != "not picked" else [],
        })
    return out, xy


def export_fiftyone(run_dir: str | os.PathLike, name: str | None = None, cfg=None, *, overwrite: bool = False,
                    persistent: bool = False, brain_key: str = "presel_map", **kw: Any) -> Any:
    """Load the run into a FiftyOne dataset (``name``, default the run directory's name); return the dataset."""
    try:
        import fiftyone as fo
        import fiftyone.brain as fob
    except ImportError:
        raise PreselError("presel export --to fiftyone needs FiftyOne: pip install 'presel[fiftyone]'") from None
    name = name or Path(run_dir).resolve().name
    if fo.dataset_exists(name) and not overwrite:
        raise PreselError(f"FiftyOne dataset '{name}' exists; pass --overwrite to replace it or --name another")
    samples, xy = run_samples(run_dir, cfg, **kw)
    ds = fo.Dataset(name, overwrite=overwrite, persistent=persistent)
    objs = []
    for s in samples:
        s = dict(s)
        tags = s.pop("tags")
        filepath = s.pop("filepath")
        objs.append(fo.Sample(filepath=filepath, tags=tags, **s))
    ds.add_samples(objs, progress=False)
    fob.compute_visualization(ds, points=np.asarray(xy, dtype=np.float64), brain_key=brain_key)
    return ds
