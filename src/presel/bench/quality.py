"""Within-task selection quality: does a method pick images a classifier learns more from?

For each task, seed, method and budget (a fraction of the task's pool): the seed draws the pool
(a random ``POOL_FRACTION`` of the task's pool images, the same for every method: paired), the
method selects from it, and a logistic-regression linear probe, a 1-nearest-neighbour classifier
and a small MLP head are trained on the *selected images' features and labels only* and scored
on the task's held-out images. Over the seeds: mean and a 95% Student-t confidence interval of the
mean, and the paired per-seed difference to each baseline (``random``, ``typiclust``) with its CI.
A cell is *won* against a baseline when that difference's CI lies above 0, *lost* when below.

Methods go through the library (:func:`presel.selection.select` on a one-task pool, task weights
uniform), except ``coreset`` (k-center greedy, :func:`presel.selection.methods.kcenter_greedy`),
which is not a ``presel select`` method. ``presel``'s seed changes its k-means initialisation;
``random``/``random-cluster`` draw with it; ``coreset`` draws its first point with it.

Probe: features L2-normalised, then standardised with the *pool's* mean and standard deviation
(unlabelled statistics every method may use); ``LogisticRegression(C=PROBE_C, max_iter=2000)``.
A selection with one class predicts that class. 1-NN: cosine similarity on L2-normalised features.
MLP: the probe's inputs, one hidden layer of ``MLP_HIDDEN`` ReLU units, Adam, ``MLP_ITER`` epochs
(scikit-learn ``MLPClassifier``, seeded).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from presel.bench.data import TaskData

BUDGETS = (0.01, 0.02, 0.05, 0.10, 0.20, 0.30)
METHODS = ("presel", "presel-cover", "herding", "random", "typiclust")  # also: random-cluster, coreset
BASELINES = ("random", "typiclust")
SEEDS = 10
POOL_FRACTION = 0.9
PROBE_C = 1.0
PROBE_ITER = 100
MLP_HIDDEN = 128
MLP_ITER = 40
CLASSIFIERS = ("probe", "nn1", "mlp")


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
    clf = LogisticRegression(C=c, max_iter=PROBE_ITER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at PROBE_ITER: accuracy is what is measured
        clf.fit(a, y_train)
    return float((clf.predict(b) == y_test).mean())


def mlp_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *,
                 mean: np.ndarray, std: np.ndarray, seed: int = 0) -> float:
    """Held-out accuracy of a one-hidden-layer MLP on the probe's inputs (seeded)."""
    from sklearn.neural_network import MLPClassifier

    a, b = _unit(x_train), _unit(x_test)
    std = np.where(std > 1e-8, std, 1.0)
    a, b = (a - mean) / std, (b - mean) / std
    classes = np.unique(y_train)
    if len(classes) == 1:
        return float((y_test == classes[0]).mean())
    clf = MLPClassifier(hidden_layer_sizes=(MLP_HIDDEN,), max_iter=MLP_ITER, random_state=seed, alpha=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
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


def pool_subset(n: int, seed: int) -> np.ndarray:
    """The pool rows seed ``seed`` uses (sorted): a random ``POOL_FRACTION`` of the task's pool."""
    return np.sort(np.random.default_rng([seed, 7, n]).permutation(n)[:max(1, int(POOL_FRACTION * n))])


def run_one(t: TaskData, seed: int, methods: Sequence[str], budgets: Sequence[float], *, images_per_cluster: int = 100,
            kmeans_backend: str = "faiss") -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Rows of one (task, seed) and the seconds each method's selections took."""
    from threadpoolctl import threadpool_limits

    pool_unit = _unit(t.x_pool)
    mean, std = pool_unit.mean(axis=0), pool_unit.std(axis=0)
    sub = pool_subset(len(t.x_pool), seed)
    xp, yp = t.x_pool[sub], t.y_pool[sub]
    rows: list[dict[str, Any]] = []
    secs: dict[str, float] = {}
    with threadpool_limits(1):
        for method in methods:
            for f in budgets:
                n = budget_count(f, len(xp))
                t0 = time.perf_counter()
                idx = select_indices(method, xp, n, seed, images_per_cluster=images_per_cluster,
                                     kmeans_backend=kmeans_backend)
                secs[method] = secs.get(method, 0.0) + time.perf_counter() - t0
                if len(idx) != n:
                    raise AssertionError(f"{method} selected {len(idx)} of {n} images on {t.name}")
                xs, ys = xp[idx], yp[idx]
                rows.append({"task": t.name, "method": method, "budget": f, "seed": seed, "selected": n,
                             "classes": int(len(np.unique(ys))),
                             "probe": probe_accuracy(xs, ys, t.x_held, t.y_held, mean=mean, std=std),
                             "nn1": nn1_accuracy(xs, ys, t.x_held, t.y_held),
                             "mlp": mlp_accuracy(xs, ys, t.x_held, t.y_held, mean=mean, std=std, seed=seed)})
    return rows, secs


def _run_one_star(args):
    return run_one(*args[:4], **args[4])


def run(tasks: Sequence[TaskData], *, methods: Sequence[str] = METHODS, budgets: Sequence[float] = BUDGETS,
        seeds: int = SEEDS, images_per_cluster: int = 100, kmeans_backend: str = "faiss", jobs: int = 1,
        log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One row per (task, method, budget, seed): selected count, probe, 1-NN and MLP held-out accuracy.

    ``jobs`` > 1 runs (task, seed) pairs in that many processes; rows come back in the same order."""
    work = [(t, s, tuple(methods), tuple(budgets), {"images_per_cluster": images_per_cluster,
                                                    "kmeans_backend": kmeans_backend})
            for t in tasks for s in range(seeds)]
    rows: list[dict[str, Any]] = []
    secs: dict[tuple[str, str], float] = {}
    if jobs > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(jobs) as p:
            results = p.imap(_run_one_star, work)
            for (t, s, *_), (r, sec) in zip(work, results):
                rows.extend(r)
                for m, v in sec.items():
                    secs[(t.name, m)] = secs.get((t.name, m), 0.0) + v
                if log and s == seeds - 1:
                    log(f"  {t.name}: done")
    else:
        for t, s, *rest in work:
            r, sec = _run_one_star((t, s, *rest))
            rows.extend(r)
            for m, v in sec.items():
                secs[(t.name, m)] = secs.get((t.name, m), 0.0) + v
            if log and s == seeds - 1:
                log(f"  {t.name}: done")
    if log:
        for m in methods:
            log(f"  selection time {m:16s} {sum(v for (_, mm), v in secs.items() if mm == m):7.1f}s")
    return rows


def summarise(rows: Sequence[dict[str, Any]], baselines: Sequence[str] = BASELINES) -> list[dict[str, Any]]:
    """Per (task, method, budget, classifier): mean and 95% CI over seeds, and for each baseline the
    paired per-seed difference (method - baseline) with its 95% CI (``d_<baseline>``, ``..._low``,
    ``..._high``). A ``mean`` task holds the mean over tasks per seed (seeds present in every task)."""
    vals: dict[tuple, dict[int, float]] = {}
    for r in rows:
        for clf in CLASSIFIERS:
            if clf in r:
                vals.setdefault((r["task"], r["method"], r["budget"], clf), {})[r["seed"]] = float(r[clf])
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    if len(tasks) > 1:
        for (_, m, f, clf) in [k for k in vals if k[0] == tasks[0]]:
            per = [vals.get((t, m, f, clf), {}) for t in tasks]
            common = set.intersection(*(set(p) for p in per))
            vals[("mean", m, f, clf)] = {sd: float(np.mean([p[sd] for p in per])) for sd in sorted(common)}
    out = []
    for (task, m, f, clf), by_seed in vals.items():
        mean, lo, hi = t_interval(list(by_seed.values()))
        row = {"task": task, "method": m, "budget": f, "classifier": clf, "n": len(by_seed), "mean": mean,
               "ci_low": lo, "ci_high": hi}
        for b in baselines:
            base = vals.get((task, b, f, clf))
            common = sorted(set(by_seed) & set(base)) if base else []
            if common:
                d, dlo, dhi = t_interval([by_seed[sd] - base[sd] for sd in common])
                row.update({f"d_{b}": d, f"d_{b}_low": dlo, f"d_{b}_high": dhi})
        out.append(row)
    return out


def scoreboard(summary: Sequence[dict[str, Any]], method: str, versus: str, classifier: str = "probe",
               budgets: Sequence[float] | None = None) -> dict[str, Any]:
    """Task-budget cells (the ``mean`` task left out) where ``method`` wins (paired difference to
    ``versus``: CI above 0), ties (CI holds 0) or loses (CI below 0); and ``below_ci``: cells where
    ``method``'s mean is below ``versus``'s own 95% CI."""
    key = {(s["task"], s["method"], s["budget"], s["classifier"]): s for s in summary}
    tasks = [t for t in dict.fromkeys(s["task"] for s in summary) if t != "mean"]
    budgets = sorted({s["budget"] for s in summary}) if budgets is None else list(budgets)
    won = tied = lost = below = 0
    for t in tasks:
        for f in budgets:
            a, b = key.get((t, method, f, classifier)), key.get((t, versus, f, classifier))
            if a is None or b is None or f"d_{versus}_low" not in a:
                continue
            won += a[f"d_{versus}_low"] > 0
            lost += a[f"d_{versus}_high"] < 0
            tied += a[f"d_{versus}_low"] <= 0 <= a[f"d_{versus}_high"]
            below += a["mean"] < b["ci_low"]
    return {"method": method, "versus": versus, "classifier": classifier, "budgets": budgets,
            "cells": won + tied + lost, "won": int(won), "tied": int(tied), "lost": int(lost), "below_ci": int(below)}


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


def markdown(summary: Sequence[dict[str, Any]], classifier: str = "probe", task: str = "mean") -> str:
    """Markdown table of one task (default: the mean over tasks): methods x budgets, ``mean +-half``."""
    budgets = sorted({s["budget"] for s in summary})
    key = {(s["task"], s["method"], s["budget"], s["classifier"]): s for s in summary}
    methods = list(dict.fromkeys(s["method"] for s in summary))
    lines = ["| method | " + " | ".join(f"{f:.0%}" for f in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for m in methods:
        cells = [key.get((task, m, f, classifier)) for f in budgets]
        lines.append(f"| {m} | " + " | ".join(f"{100 * c['mean']:.1f} +-{100 * (c['ci_high'] - c['mean']):.1f}"
                                              if c else "-" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_scoreboard(summary: Sequence[dict[str, Any]], method: str) -> str:
    """Markdown: per baseline and classifier, cells won/tied/lost (``w/t/l``) by budget, over the tasks."""
    budgets = sorted({s["budget"] for s in summary})
    clfs = [c for c in CLASSIFIERS if any(s["classifier"] == c for s in summary)]
    lines = [f"| {method} vs | classifier | " + " | ".join(f"{f:.0%}" for f in budgets) + " | all |",
             "|---|---|" + "---:|" * (len(budgets) + 1)]
    for b in BASELINES:
        for c in clfs:
            cells = [scoreboard(summary, method, b, c, [f]) for f in budgets] + [scoreboard(summary, method, b, c)]
            lines.append(f"| {b} | {c} | " + " | ".join(f"{x['won']}/{x['tied']}/{x['lost']}" for x in cells) + " |")
    return "\n".join(lines) + "\n"


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
            (line,) = ax.plot(100 * f, 100 * mu, marker="o", ms=3, label=m, lw=2.2 if m.startswith(("presel", "herding")) else 1.2)
            ax.fill_between(100 * f, 100 * lo, 100 * hi, alpha=0.15, color=line.get_color(), lw=0)
        ax.set_xscale("log")
        ticks = sorted({round(100 * s["budget"], 2) for s in summary})
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{v:g}" for v in ticks])
        ax.set_title(t if t != "mean" else "mean over tasks")
        ax.set_xlabel("budget (% of task)")
        names = {"probe": "linear probe", "nn1": "1-NN", "mlp": "MLP head"}
        ax.set_ylabel(f"{names.get(classifier, classifier)} held-out acc. (%)")
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
    """``quality.json`` (meta, summary, rows), ``quality.csv`` (summary), ``quality.md`` (tables of
    the mean over tasks and the won/tied/lost counts), and one plot per classifier
    (``quality.png`` for the probe, ``quality_<classifier>.png`` for the others) in ``out_dir``,
    each written atomically."""
    from presel.io.atomic import write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clfs = [c for c in CLASSIFIERS if any(s["classifier"] == c for s in summary)]
    paths = {"json": out / "quality.json", "csv": out / "quality.csv", "md": out / "quality.md"}
    paths.update({f"png_{c}" if c != "probe" else "png": out / (f"quality_{c}.png" if c != "probe" else "quality.png")
                  for c in clfs})
    write_json(paths["json"], {"meta": meta, "summary": list(summary), "rows": list(rows)})
    buf = io.StringIO()
    fields = ["task", "method", "budget", "classifier", "n", "mean", "ci_low", "ci_high"]
    fields += [f"d_{b}{e}" for b in BASELINES for e in ("", "_low", "_high")]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", restval="")
    w.writeheader()
    for s in summary:
        w.writerow(s)
    tmp = paths["csv"].with_name("quality.csv.tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    tmp.replace(paths["csv"])
    names = {"probe": "Linear probe", "nn1": "1-NN", "mlp": "MLP head"}
    md = [f"{names.get(c, c)}, held-out accuracy (%), mean over tasks +- 95% CI half-width\n\n{markdown(summary, c)}"
          for c in clfs]
    methods = list(dict.fromkeys(s["method"] for s in summary))
    md += [f"Cells won/tied/lost (paired difference CI above/holding/below 0), over the tasks\n\n"
           f"{markdown_scoreboard(summary, m)}" for m in methods if m not in BASELINES]
    tmp = paths["md"].with_name("quality.md.tmp")
    tmp.write_text("\n".join(md), encoding="utf-8")
    tmp.replace(paths["md"])
    for c in clfs:
        plot(summary, paths[f"png_{c}" if c != "probe" else "png"], c)
    return paths


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
