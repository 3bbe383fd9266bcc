"""The within-task benchmark from the command line: one set of flags and one driver for both
``benchmarks/quality.py`` and ``presel bench quality``."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    from presel.bench import quality
    from presel.bench.data import task_names

    g = p.add_mutually_exclusive_group()
    g.add_argument("--run", default=None, help="a presel run directory: write into RUN/bench/")
    g.add_argument("--out", default=None, help="output directory (default: runs/bench-quality)")
    p.add_argument("--tasks", default=",".join(task_names()), help="comma-separated benchmark tasks")
    p.add_argument("--methods", default=",".join(quality.METHODS), help="comma-separated selection methods")
    p.add_argument("--budgets", default=",".join(str(b) for b in quality.BUDGETS), help="fractions of each task's pool")
    p.add_argument("--seeds", type=int, default=quality.SEEDS, help="seeds (each draws the pool and the method's choices)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    p.add_argument("--image-size", type=int, default=None,
                   help="embedding input size for every task (default: per task, 112 px; rendered tasks 56 px)")
    p.add_argument("--images-per-cluster", type=int, default=100)
    p.add_argument("--threads", type=int, default=None, help="torch threads for embedding (default: torch's)")
    p.add_argument("--cache", default=None, help="feature cache directory (default: $PRESEL_CACHE/bench)")


def _csv(value: str, what: str, known=None) -> list[str]:
    from presel.errors import PreselError

    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise PreselError(f"--{what} is empty; give a comma-separated list")
    bad = [v for v in items if known is not None and v not in known]
    if bad:
        raise PreselError(f"--{what}: unknown {', '.join(bad)}; known: {', '.join(known)}")
    return items


def comparisons(summary, methods) -> list[dict[str, Any]]:
    from presel.bench import quality

    return [quality.scoreboard(summary, m, b, clf) for m in methods if m not in quality.BASELINES
            for b in quality.BASELINES if b in methods for clf in quality.CLASSIFIERS]


def main(a: argparse.Namespace) -> int:
    from presel.bench import quality
    from presel.bench.data import IMAGE_SIZE, load_task, task_names
    from presel.errors import PreselError
    from presel.selection.select import METHODS

    out = Path(a.run) / "bench" if a.run else Path(a.out or "runs/bench-quality")
    if a.run and not Path(a.run).is_dir():
        raise PreselError(f"--run {a.run}: no such run directory; give an existing run (or --out DIR)")
    try:
        budgets = [float(b) for b in _csv(a.budgets, "budgets")]
    except ValueError as e:
        raise PreselError(f"--budgets {a.budgets!r}: {e}; give fractions like 0.01,0.05") from None
    if not all(0 < b <= 1 for b in budgets):
        raise PreselError(f"--budgets {a.budgets!r}: every budget must be a fraction in (0, 1]")
    methods = _csv(a.methods, "methods", [*METHODS, "coreset"])
    names = _csv(a.tasks, "tasks", task_names())
    if a.seeds < 2:
        raise PreselError(f"--seeds {a.seeds}: give at least 2 seeds (confidence intervals need them)")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    tasks = [load_task(n, image_size=a.image_size, cache=Path(a.cache) if a.cache else None, threads=a.threads,
                       log=log) for n in names]
    t_feat = time.perf_counter() - t0
    for t in tasks:
        log(f"{t.name}: pool {len(t.y_pool)}, held-out {len(t.y_held)}, {len(set(t.y_pool.tolist()))} classes")
    rows = quality.run(tasks, methods=methods, budgets=budgets, seeds=a.seeds, images_per_cluster=a.images_per_cluster,
                       jobs=max(1, a.jobs), log=log)
    summary = quality.summarise(rows)
    wall = time.perf_counter() - t0
    from presel.bench.data import DERIVED

    meta = {"tasks": {t.name: {"pool": len(t.y_pool), "heldout": len(t.y_held),
                               "classes": len(set(t.y_pool.tolist()))} for t in tasks},
            "methods": methods, "budgets": budgets, "seeds": a.seeds, "pool_fraction": quality.POOL_FRACTION,
            "image_size": {n: a.image_size or IMAGE_SIZE[DERIVED[n][0] if n in DERIVED else n] for n in names},
            "images_per_cluster": a.images_per_cluster, "model": "dinov2-small (offline)", "probe_c": quality.PROBE_C,
            "probe_iter": quality.PROBE_ITER, "mlp": {"hidden": quality.MLP_HIDDEN, "iter": quality.MLP_ITER},
            "jobs": a.jobs, "features_seconds": round(t_feat, 1), "seconds": round(wall, 1),
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()), "python": platform.python_version(),
            "comparisons": comparisons(summary, methods)}
    paths = quality.write(out, rows, summary, meta)
    for clf in quality.CLASSIFIERS:
        print(quality.table(summary, clf))
    for c in meta["comparisons"]:
        print(f"{c['method']:16s} vs {c['versus']:10s} ({c['classifier']:5s}): won {c['won']:3d}, tied {c['tied']:3d}, "
              f"lost {c['lost']:3d} of {c['cells']} cells; mean below the baseline's CI in {c['below_ci']}")
    print(f"features {t_feat:.0f}s, total {wall:.0f}s; wrote {', '.join(str(v) for v in paths.values())}")
    return 0
