"""Within-task selection quality: held-out accuracy of classifiers trained on the selected images only.

    PYTHONPATH=src nice -n 10 python benchmarks/quality.py --run runs/demo      # -> runs/demo/bench/quality.*
    PYTHONPATH=src python benchmarks/quality.py --out runs/bench-quality --seeds 5

For each task (see presel.bench.data: MNIST, Fashion-MNIST, scikit-learn digits, two rendered tasks),
method and budget (1, 2, 5, 10, 15, 30% of the task's pool), over ``--seeds`` seeds: a logistic-
regression probe and a 1-NN classifier trained on the selected images' DINOv2-S features, scored on
the task's held-out images; mean and 95% t-interval. Prints the tables and writes quality.json
(meta, summary, per-seed rows), quality.csv (summary), quality.png (probe) and quality_nn1.png.

Features are embedded once (about 10 minutes on 2 idle cores) and cached in
$PRESEL_CACHE/bench; with the cache, the whole benchmark takes a few minutes.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from presel.bench import quality
    from presel.bench.data import IMAGE_SIZE, TASKS, load_task

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--run", default=None, help="a presel run directory: write into RUN/bench/")
    g.add_argument("--out", default=None, help="output directory (default: runs/bench-quality)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    p.add_argument("--methods", default=",".join(quality.METHODS), help="comma-separated selection methods")
    p.add_argument("--budgets", default=",".join(str(b) for b in quality.BUDGETS), help="fractions of each task's pool")
    p.add_argument("--seeds", type=int, default=quality.SEEDS)
    p.add_argument("--image-size", type=int, default=None,
                   help="embedding input size for every task (default: per task, 112 px; rendered tasks 56 px)")
    p.add_argument("--images-per-cluster", type=int, default=100)
    p.add_argument("--threads", type=int, default=None, help="torch threads for embedding (default: torch's)")
    p.add_argument("--cache", default=None, help="feature cache directory (default: $PRESEL_CACHE/bench)")
    a = p.parse_args(argv)
    out = Path(a.run) / "bench" if a.run else Path(a.out or "runs/bench-quality")
    budgets = [float(b) for b in a.budgets.split(",") if b]
    methods = [m for m in a.methods.split(",") if m]
    names = [t for t in a.tasks.split(",") if t]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    tasks = [load_task(n, image_size=a.image_size, cache=Path(a.cache) if a.cache else None, threads=a.threads,
                       log=log) for n in names]
    t_feat = time.perf_counter() - t0
    for t in tasks:
        log(f"{t.name}: pool {len(t.y_pool)}, held-out {len(t.y_held)}, {len(set(t.y_pool.tolist()))} classes")
    rows = quality.run(tasks, methods=methods, budgets=budgets, seeds=a.seeds,
                       images_per_cluster=a.images_per_cluster, log=log)
    summary = quality.summarise(rows)
    wall = time.perf_counter() - t0
    meta = {"tasks": {t.name: {"pool": len(t.y_pool), "heldout": len(t.y_held)} for t in tasks},
            "methods": methods, "budgets": budgets, "seeds": a.seeds,
            "image_size": {n: a.image_size or IMAGE_SIZE[n] for n in names},
            "images_per_cluster": a.images_per_cluster, "model": "dinov2-small (offline)", "probe_c": quality.PROBE_C,
            "features_seconds": round(t_feat, 1), "seconds": round(wall, 1), "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "comparisons": [quality.wins(summary, m, v, clf) for m in methods if m != "presel" and m.startswith("presel")
                            for v in ("presel", "random", "typiclust") if v in methods for clf in quality.CLASSIFIERS]
            + [quality.wins(summary, "presel", "random", clf) for clf in quality.CLASSIFIERS
               if "presel" in methods and "random" in methods]}
    paths = quality.write(out, rows, summary, meta)
    print(quality.table(summary, "probe"))
    print(quality.table(summary, "nn1"))
    for c in meta["comparisons"]:
        print(f"{c['method']} vs {c['versus']} ({c['classifier']}, budgets {c['budgets']}): strictly above (CIs apart) "
              f"in {c['strictly_above']}/{c['cells']} task-budget cells, mean below in {c['mean_below']}")
    print(f"features {t_feat:.0f}s, total {wall:.0f}s; wrote {', '.join(str(v) for v in paths.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
