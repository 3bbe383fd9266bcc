"""presel map at scale: a synthetic pool of N images (features only, placeholder thumbnails).

Builds a run directory holding what `presel map` reads (selection/assignments.parquet and summary.json in the
selection's own schema, a .npy feature matrix + ids), then measures:

- the projection time (PCA + UMAP fitted on a sample + transform of the rest, `presel.map.project`),
- the page size (index.html + assets/data.js),
- the time until the page is interactive in headless Chromium (the first frame drawn with every point: the
  page's own `data-interactive-ms`, from navigation start), and Chromium's wall time for the whole load.

    nice -n 10 python benchmarks/map_bench.py --n 100000
    nice -n 10 python benchmarks/map_bench.py --n 1000000 --out /tmp/presel-map-bench

Figures are printed and written to OUT/map_bench_<n>.json. The feature matrix is clustered (one Gaussian blob per
cluster, clusters grouped into tasks) so that UMAP has structure to find, as in a real pool.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_run(root: Path, n: int, dim: int, tasks: int, per_cluster: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """A run directory with a selection of a synthetic pool; returns (run, features.npy, ids.txt)."""
    from presel.io.atomic import write_json, write_parquet
    from presel.selection.select import ASSIGNMENT_SCHEMA, _table

    run = root / f"run_{n}"
    feats, ids_path = root / f"features_{n}_{dim}.npy", root / f"ids_{n}.txt"
    rng = np.random.default_rng(seed)
    n_clusters = max(1, n // per_cluster)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    label = np.sort(rng.integers(0, n_clusters, n))
    task = (label * tasks) // n_clusters
    if not feats.is_file():
        mm = np.lib.format.open_memmap(feats, mode="w+", dtype=np.float16, shape=(n, dim))
        for s in range(0, n, 100_000):
            e = min(n, s + 100_000)
            mm[s:e] = centres[label[s:e]] + 0.6 * rng.standard_normal((e - s, dim)).astype(np.float32)
        mm.flush()
        del mm
    ids = [f"t{task[i]}-{i:07d}" for i in range(n)]
    ids_path.write_text("\n".join(ids) + "\n")
    # the selection: 1% reference, 10% selected, best-ranked inside each cluster
    rank = np.zeros(n, dtype=np.int64)
    starts = np.searchsorted(label, np.arange(n_clusters + 1))
    for c in range(n_clusters):
        m = starts[c + 1] - starts[c]
        rank[starts[c]:starts[c + 1]] = rng.permutation(m) + 1
    ref = rng.random(n) < 0.01
    rank[ref] = 0
    sel = (~ref) & (rank <= np.maximum(1, per_cluster // 10))
    score = np.where(ref, np.nan, 1.0 / np.maximum(rank, 1))
    first = np.array([label[task == t].min() if (task == t).any() else 0 for t in range(tasks)])
    cluster = label - first[task]  # cluster numbers start at 0 in each task, as k-means writes them
    cols = {"id": ids, "image": [f"images/{i}.jpg" for i in ids], "task": [f"task{t}" for t in task],
            "cluster": cluster.tolist(), "nc_score": [None if np.isnan(s) else float(s) for s in score],
            "score": [None if np.isnan(s) else float(s) for s in score],
            "rank": [int(r) if r > 0 else None for r in rank], "selected": sel.tolist(), "reference": ref.tolist()}
    (run / "selection").mkdir(parents=True, exist_ok=True)
    write_parquet(run / "selection" / "assignments.parquet", _table(cols, ASSIGNMENT_SCHEMA))
    per_task = {}
    for t in range(tasks):
        m = task == t
        per_task[f"task{t}"] = {"records": int(m.sum()), "images": int(m.sum()), "reference": int(ref[m].sum()),
                                "available": int((~ref[m]).sum()), "clusters": int(len(np.unique(cluster[m]))),
                                "weight": 1.0 / tasks, "quota": int(sel[m].sum()), "selected": int(sel[m].sum())}
    write_json(run / "selection" / "summary.json", {
        "method": "presel", "task_weights": "uniform", "tasks": per_task,
        "totals": {"records": n, "distinct_images": n, "budget": int(ref.sum() + sel.sum()), "reference": int(ref.sum()),
                   "selected": int(sel.sum())}})
    return run, feats, ids_path


def _chromium(exe: str, url: str, timeout: float) -> tuple[float, str]:
    """Wall seconds and DOM of one headless Chromium run (network blocked, real time: no virtual time budget, so
    the page's performance.now() is wall-clock time; --dump-dom waits for the load event, after the page's script)."""
    with tempfile.TemporaryDirectory(prefix="presel-map-bench-") as prof:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
               "--disable-background-networking", "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={prof}",
               "--window-size=1280,800", "--dump-dom", url]
        t = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "HOME": prof})
        return time.perf_counter() - t, res.stdout


def page_load(index: Path, timeout: float) -> dict:
    """Load the page in headless Chromium; the page's own timings, the wall time, and the wall time of an empty
    page (the browser's own start and exit)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return {"chromium": "not installed"}
    blank = index.parent / "blank.html"
    blank.write_text("<!DOCTYPE html><title>blank</title>")
    base, _ = _chromium(exe, blank.resolve().as_uri(), timeout)
    blank.unlink()
    wall, dom = _chromium(exe, index.resolve().as_uri(), timeout)
    m = re.search(r"<html([^>]*)>", dom)
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(1))) if m else {}
    return {"chromium_wall_s": round(wall, 2), "chromium_wall_s_blank_page": round(base, 2),
            "loaded": attrs.get("data-loaded") == "yes",
            "points_drawn": int(attrs.get("data-drawn", -1)),
            "interactive_ms": int(attrs.get("data-interactive-ms", -1)),
            "decode_and_first_frame_ms": int(attrs.get("data-render-ms", -1)),
            "frame_ms": int(attrs.get("data-frame-ms", -1)),
            "js_errors": attrs.get("data-js-error")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--per-cluster", type=int, default=100)
    ap.add_argument("--fit-sample", type=int, default=50_000)
    ap.add_argument("--chunk", type=int, default=50_000)
    ap.add_argument("--method", default="umap", choices=["umap", "pca"])
    ap.add_argument("--out", default="/tmp/presel-map-bench")
    ap.add_argument("--fresh", action="store_true", help="drop the cached projection first")
    ap.add_argument("--chromium-timeout", type=float, default=900)
    args = ap.parse_args()

    from presel.io.features import load_features
    from presel.map import MapConfig, build_map, project

    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    run, feats, ids = synthetic_run(root, args.n, args.dim, args.tasks, args.per_cluster)
    setup = time.perf_counter() - t
    if args.fresh and (run / "map").exists():
        shutil.rmtree(run / "map")
    cfg = MapConfig(method=args.method, fit_sample=args.fit_sample, chunk=args.chunk, thumb_size=0)
    fm = load_features(feats, ids)
    t = time.perf_counter()  # the projection alone (points in feature order, as the synthetic run lists them)
    project(fm.ids, fm.rows, fm.dim, run / "map" / "projection", cfg, progress=True)
    proj = time.perf_counter() - t
    t = time.perf_counter()  # the page, with the projection now cached (its key still hashes every feature)
    index = build_map(run, cfg, features=feats, feature_ids=ids, progress=True)
    build = time.perf_counter() - t
    size = index.stat().st_size + (index.parent / "assets" / "data.js").stat().st_size
    load = page_load(index, args.chromium_timeout)
    out = {"n": args.n, "dim": args.dim, "method": args.method, "fit_sample": args.fit_sample, "chunk": args.chunk,
           "cpus": os.cpu_count(), "loadavg_1m_at_end": round(os.getloadavg()[0], 2), "setup_s": round(setup, 1),
           "projection_s": round(proj, 1),
           "page_build_s_with_cached_projection": round(build, 1), "page_mb": round(size / 1e6, 1), **load}
    print(json.dumps(out, indent=1))
    (root / f"map_bench_{args.n}.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
