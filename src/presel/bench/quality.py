"""Within-task selection quality: does a method pick images a classifier learns more from?

For each task, method, budget (a fraction of the task's pool) and seed: select images with the
method, train a logistic-regression linear probe and a 1-nearest-neighbour classifier on the
*selected images' features and labels only*, and score both on the task's held-out images. Over
the seeds: mean and a 95% Student-t confidence interval of the mean.

Methods go through the library (:func:`presel.selection.select` on a one-task pool, task weights
uniform), except ``coreset`` (k-center greedy, :func:`presel.selection.methods.kcenter_greedy`),
which is not a ``presel select`` method. ``presel``'s seed changes its k-means initialisation;
``random``/``random-cluster`` draw with it; ``coreset`` draws its first point with it.

Probe: features L2-normalised, then standardised with the *pool's* mean and standard deviation
(unlabelled statistics every method may use); ``LogisticRegression(C=PROBE_C, max_iter=2000)``.
A selection with one class predicts that class. 1-NN: cosine similarity on L2-normalised features.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from presel.bench.data import TaskData

BUDGETS = (0.01, 0.02, 0.05, 0.10, 0.15, 0.30)
METHODS = ("presel", "presel-cover", "random", "random-cluster", "typiclust", "coreset")
SEEDS = 5
PROBE_C = 1.0
CLASSIFIERS = ("probe", "nn1")


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two-sided ``level`` Student-t confidence interval ``(mean, low, high)``.

    One value: the interval is the value itself (no spread can be estimated).
    """
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("t_interval of no values")
    m = float(v.mean())
    if v.size == 1:
        return m, m, m
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return m, m - half, m + half


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *,
                   mean: np.ndarray | None = None, std: np.ndarray | None = None, c: float = PROBE_C) -> float:
    """Held-out accuracy of a logistic-regression probe trained on (x_train, y_train).

    Features are L2-normalised, then standardised with ``mean``/``std`` (default: of x_train).
    """
    from sklearn.linear_model import LogisticRegression

    a, b = _unit(x_train), _unit(x_test)
    mean = a.mean(axis=0) if mean is None else mean
    std = a.std(axis=0) if std is None else std
    std = np.where(std > 1e-8, std, 1.0)
    a, b = (a - mean) / std, (b - mean) / std
    classes = np.unique(y_train)
    if len(classes) == 1:
        return float((y_test == classes[0]).mean())
    clf = LogisticRegression(C=c, max_iter=2000)
    clf.fit(a, y_train)
    return float((clf.predict(b) == y_test).mean())


def nn1_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Held-out accuracy of a 1-nearest-neighbour classifier (cosine similarity; ties: the first train row)."""
    sim = _unit(x_test) @ _unit(x_train).T
    return float((np.asarray(y_train)[np.argmax(sim, axis=1)] == y_test).mean())


def select_indices(method: str, x: np.ndarray, n: int, seed: int, *, images_per_cluster: int = 100,
                   kmeans_backend: str = "faiss") -> np.ndarray:
    """Indices of the ``n`` pool rows a method selects from a one-task pool with features ``x``."""
    from presel.io.features import FeatureMatrix
    from presel.records import Pool, PoolRecord
    from presel.selection import SelectConfig, select
    from presel.selection.methods import kcenter_greedy

    if method == "coreset":
        return np.sort(kcenter_greedy(_unit(x), n, seed))
    ids = [f"i{j:06d}" for j in range(len(x))]
    pool = Pool([PoolRecord(i, f"{i}.png", "task", j + 1) for j, i in enumerate(ids)], Path("bench"), Path("."))
    cfg = SelectConfig(budget_count=int(n), method=method, task_weights="uniform", seed=int(seed),
                       images_per_cluster=images_per_cluster, kmeans_backend=kmeans_backend)
    res = select(pool, FeatureMatrix([(ids, np.ascontiguousarray(x, dtype=np.float32))], source="bench"), config=cfg)
    return np.sort(np.array([int(i[1:]) for i in res.selected_ids], dtype=np.int64))


def budget_count(fraction: float, n: int) -> int:
    return max(1, int(round(fraction * n)))


def run(tasks: Sequence[TaskData], *, methods: Sequence[str] = METHODS, budgets: Sequence[float] = BUDGETS,
        seeds: int = SEEDS, images_per_cluster: int = 100, kmeans_backend: str = "faiss",
        log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One row per (task, method, budget, seed): selected count, probe and 1-NN held-out accuracy."""
    rows: list[dict[str, Any]] = []
    for t in tasks:
        pool_unit = _unit(t.x_pool)
        mean, std = pool_unit.mean(axis=0), pool_unit.std(axis=0)
        for method in methods:
            t0 = time.perf_counter()
            for f in budgets:
                n = budget_count(f, len(t.x_pool))
                for seed in range(seeds):
                    idx = select_indices(method, t.x_pool, n, seed, images_per_cluster=images_per_cluster,
                                         kmeans_backend=kmeans_backend)
                    if len(idx) != n:
                        raise AssertionError(f"{method} selected {len(idx)} of {n} images on {t.name}")
                    xs, ys = t.x_pool[idx], t.y_pool[idx]
                    rows.append({"task": t.name, "method": method, "budget": f, "seed": seed, "selected": n,
                                 "classes": int(len(np.unique(ys))),
                                 "probe": probe_accuracy(xs, ys, t.x_held, t.y_held, mean=mean, std=std),
                                 "nn1": nn1_accuracy(xs, ys, t.x_held, t.y_held)})
            if log:
                log(f"  {t.name:15s} {method:15s} {time.perf_counter() - t0:6.1f}s")
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and 95% CI per (task, method, budget, classifier), plus a ``mean`` task (the mean over
    tasks per seed, its CI over seeds)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        for clf in CLASSIFIERS:
            groups.setdefault((r["task"], r["method"], r["budget"], clf), []).append(r[clf])
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    if len(tasks) > 1:
        per_seed: dict[tuple, dict[int, list[float]]] = {}
        for r in rows:
            for clf in CLASSIFIERS:
                per_seed.setdefault((r["method"], r["budget"], clf), {}).setdefault(r["seed"], []).append(r[clf])
        for (m, f, clf), by_seed in per_seed.items():
            groups[("mean", m, f, clf)] = [float(np.mean(v)) for v in by_seed.values() if len(v) == len(tasks)]
    out = []
    for (task, m, f, clf), vals in groups.items():
        mean, lo, hi = t_interval(vals)
        out.append({"task": task, "method": m, "budget": f, "classifier": clf, "n": len(vals), "mean": mean,
                    "ci_low": lo, "ci_high": hi})
    return out


def wins(summary: Sequence[dict[str, Any]], method: str, versus: str, classifier: str = "probe",
         budgets: Sequence[float] = (0.05, 0.10, 0.15)) -> dict[str, Any]:
    """Where ``method`` is strictly above ``versus`` (CIs do not overlap), at par, or below (by mean)."""
    key = {(s["task"], s["method"], s["budget"], s["classifier"]): s for s in summary}
    tasks = [t for t in dict.fromkeys(s["task"] for s in summary) if t != "mean"]
    above, below, cells = 0, 0, 0
    for t in tasks:
        for f in budgets:
            a, b = key.get((t, method, f, classifier)), key.get((t, versus, f, classifier))
            if a is None or b is None:
                continue
            cells += 1
            above += a["ci_low"] > b["ci_high"]
            below += a["mean"] < b["mean"]
    return {"method": method, "versus": versus, "classifier": classifier, "budgets": list(budgets), "cells": cells,
            "strictly_above": int(above), "mean_below": int(below)}


def table(summary: Sequence[dict[str, Any]], classifier: str = "probe") -> str:
    """Text table: rows task x method, columns budgets, cells ``mean +-half-width`` in accuracy points."""
    budgets = sorted({s["budget"] for s in summary})
    key = {(s["task"], s["method"], s["budget"], s["classifier"]): s for s in summary}
    tasks = list(dict.fromkeys(s["task"] for s in summary))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    buf = io.StringIO()
    head = f"{'task':15s} {'method':15s}" + "".join(f"{f'{f:.0%}':>13s}" for f in budgets)
    buf.write(f"{classifier} accuracy (%), mean +- 95% CI half-width\n{head}\n")
    for t in tasks:
        for m in methods:
            cells = []
            for f in budgets:
                s = key.get((t, m, f, classifier))
                cells.append(f"{100 * s['mean']:6.1f} +-{100 * (s['ci_high'] - s['mean']):4.1f}" if s else f"{'-':>13s}")
            buf.write(f"{t:15s} {m:15s}" + "".join(f"{c:>13s}" for c in cells) + "\n")
    return buf.getvalue()


def plot(summary: Sequence[dict[str, Any]], path: str | Path, classifier: str = "probe") -> None:
    """Accuracy vs budget per method with CI bands, one panel per task (and the mean); PNG, atomic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(s["task"] for s in summary))
    tasks = [t for t in tasks if t != "mean"] + (["mean"] if "mean" in tasks else [])
    methods = list(dict.fromkeys(s["method"] for s in summary))
    ncol = min(3, len(tasks))
    nrow = math.ceil(len(tasks) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.4 * nrow), squeeze=False)
    for ax, t in zip(axes.flat, tasks):
        for m in methods:
            pts = sorted((s["budget"], s["mean"], s["ci_low"], s["ci_high"]) for s in summary
                         if s["task"] == t and s["method"] == m and s["classifier"] == classifier)
            if not pts:
                continue
            f, mu, lo, hi = (np.array(v) for v in zip(*pts))
            (line,) = ax.plot(100 * f, 100 * mu, marker="o", ms=3, label=m, lw=2.2 if m.startswith("presel") else 1.2)
            ax.fill_between(100 * f, 100 * lo, 100 * hi, alpha=0.15, color=line.get_color(), lw=0)
        ax.set_xscale("log")
        ax.set_xticks([1, 2, 5, 10, 15, 30])
        ax.set_xticklabels(["1", "2", "5", "10", "15", "30"])
        ax.set_title(t if t != "mean" else "mean over tasks")
        ax.set_xlabel("budget (% of task)")
        ax.set_ylabel(f"{'linear probe' if classifier == 'probe' else '1-NN'} held-out acc. (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write(out_dir: str | Path, rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]],
          meta: dict[str, Any]) -> dict[str, Path]:
    """``quality.json`` (meta, summary, rows), ``quality.csv`` (summary), ``quality.png`` and
    ``quality_nn1.png`` in ``out_dir``, each written atomically."""
    from presel.io.atomic import write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "quality.json", "csv": out / "quality.csv", "png": out / "quality.png",
             "png_nn1": out / "quality_nn1.png"}
    write_json(paths["json"], {"meta": meta, "summary": list(summary), "rows": list(rows)})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["task", "method", "budget", "classifier", "n", "mean", "ci_low", "ci_high"],
                       lineterminator="\n")
    w.writeheader()
    for s in summary:
        w.writerow(s)
    tmp = paths["csv"].with_name("quality.csv.tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    tmp.replace(paths["csv"])
    plot(summary, paths["png"], "probe")
    plot(summary, paths["png_nn1"], "nn1")
    return paths


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
