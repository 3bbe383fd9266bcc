"""Report figures: matplotlib (Agg) figures returned as PNG ``data:`` URIs, plus a numpy PCA.

Every function takes plain Python / numpy data (no files) and returns a string usable as an
``<img src>``; the report stays one self-contained file. Text is drawn as plain text (no mathtext), so
task names with ``$`` are safe. matplotlib is imported inside the
functions, so importing this module is cheap.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SELECTED = "#2563eb"  # blue
REFERENCE = "#111827"  # near black
POOL = "#c7cdd6"  # light grey
ACCENT = "#f97316"  # orange
INK = "#374151"
GRID = "#e5e7eb"
TASK_COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
               "#9c755f", "#bab0ac", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def task_color(i: int) -> str:
    return TASK_COLORS[i % len(TASK_COLORS)]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "font.family": "DejaVu Sans", "font.size": 9, "axes.edgecolor": "#9ca3af", "axes.labelcolor": INK,
        "axes.titlesize": 10, "axes.titleweight": "bold", "axes.titlecolor": INK, "xtick.color": INK,
        "ytick.color": INK, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
        "grid.color": GRID, "grid.linewidth": 0.8, "axes.axisbelow": True, "legend.frameon": False,
        "figure.dpi": 100, "svg.fonttype": "none",
        # task names are data, not markup: "$x$" in a name is drawn as typed, never parsed as mathtext
        "text.parse_math": False, "text.usetex": False,
    })
    return plt


def to_data_uri(fig: Any, dpi: int = 130) -> str:
    """PNG ``data:`` URI of a figure (closed afterwards)."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_data_uri(path: Any, size: int = 112) -> str:
    """A JPEG thumbnail (longest side ``size`` px) of an image file as a ``data:`` URI."""
    from PIL import Image

    with Image.open(path) as im:
        im.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a reduced scale, much faster for big photos
        return thumbnail_uri(im, size)


def thumbnail_uri(image: Any, size: int = 112) -> str:
    """A JPEG thumbnail (longest side ``size`` px) of a PIL image as a ``data:`` URI."""
    from PIL import Image

    im = image.convert("RGB")
    im.thumbnail((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """First two principal components of the rows of ``x`` (numpy SVD) and their explained variance ratios."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] == 0:
        return np.zeros((0, 2)), (0.0, 0.0)
    xc = x - x.mean(axis=0, keepdims=True)
    if x.shape[0] == 1:
        return np.zeros((1, 2)), (0.0, 0.0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(2, vt.shape[0])
    xy = np.zeros((x.shape[0], 2))
    xy[:, :k] = xc @ vt[:k].T
    # fix the sign so that reruns and platforms agree: largest |loading| positive
    for j in range(k):
        if vt[j][np.argmax(np.abs(vt[j]))] < 0:
            xy[:, j] = -xy[:, j]
    var = s**2
    tot = float(var.sum()) or 1.0
    ratios = [float(var[j] / tot) if j < len(var) else 0.0 for j in range(2)]
    return xy, (ratios[0], ratios[1])


def _grid(n: int, ncols: int, w: float, h: float) -> tuple[Any, list[Any]]:
    plt = _plt()
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def share_bars(tasks: Sequence[str], pool_share: Sequence[float], budget_share: Sequence[float]) -> str:
    """Horizontal paired bars: each task's share of the pool vs its share of the selection budget."""
    plt = _plt()
    n = len(tasks)
    fig, ax = plt.subplots(figsize=(7.6, 0.42 * n + 1.1))
    y = np.arange(n)
    ax.barh(y - 0.19, np.asarray(pool_share) * 100, height=0.36, color=POOL, label="share of pool")
    ax.barh(y + 0.19, np.asarray(budget_share) * 100, height=0.36, color=SELECTED, label="share of budget")
    for yi, (p, b) in enumerate(zip(pool_share, budget_share, strict=True)):
        ax.text(p * 100 + 0.4, yi - 0.19, f"{p * 100:.1f}%", va="center", fontsize=7.5, color=INK)
        ax.text(b * 100 + 0.4, yi + 0.19, f"{b * 100:.1f}%", va="center", fontsize=7.5, color=SELECTED)
    ax.set_yticks(y, list(tasks))
    ax.invert_yaxis()
    ax.set_xlabel("% of images")
    ax.set_xlim(0, max([*pool_share, *budget_share, 0.01]) * 100 * 1.18)
    ax.grid(axis="y", visible=False)
    ax.legend(loc="lower right", ncols=2, bbox_to_anchor=(1.0, 1.0))
    return to_data_uri(fig)


def irs_boxes(tasks: Sequence[str], values: Sequence[np.ndarray], colors: Sequence[str]) -> str:
    """IRS per reference sample, one box per task (low IRS: the question matters)."""
    plt = _plt()
    n = len(tasks)
    fig, ax = plt.subplots(figsize=(7.6, 0.42 * n + 1.0))
    data = [np.asarray(v, dtype=float)[np.isfinite(np.asarray(v, dtype=float))] for v in values]
    ax.boxplot([d if len(d) else np.array([np.nan]) for d in data], orientation="horizontal", widths=0.55,
               patch_artist=True, showfliers=False, medianprops={"color": INK},
               boxprops={"linewidth": 0.8}, whiskerprops={"linewidth": 0.8}, capprops={"linewidth": 0.8})
    for i, (d, c) in enumerate(zip(data, colors, strict=True)):
        ax.patches[i].set_facecolor(c)
        ax.patches[i].set_alpha(0.45)
        if len(d):
            jitter = np.random.default_rng(i).uniform(-0.16, 0.16, len(d))
            ax.scatter(d, np.full(len(d), i + 1) + jitter, s=7, color=c, alpha=0.7, linewidths=0, zorder=3)
    ax.axvline(1.0, color=ACCENT, linewidth=1, linestyle="--")
    ax.set_yticks(np.arange(1, n + 1), list(tasks))
    ax.invert_yaxis()
    ax.set_xlabel("IRS = L(R | Q, I) / L(R | I)     (dashed: 1 = the question does not help)")
    ax.grid(axis="y", visible=False)
    return to_data_uri(fig)


def cluster_hist(sizes: Mapping[str, Sequence[int]], colors: Mapping[str, str]) -> str:
    """Histogram of cluster sizes, stacked by task."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.6, 3.0))
    allsz = np.concatenate([np.asarray(v, dtype=float) for v in sizes.values()]) if sizes else np.zeros(0)
    hi = max(2.0, float(allsz.max()) if len(allsz) else 2.0)
    bins = np.linspace(0.5, hi + 0.5, min(40, int(hi)) + 1)
    ax.hist([np.asarray(v) for v in sizes.values()], bins=bins, stacked=True, label=list(sizes),
            color=[colors[t] for t in sizes], edgecolor="white", linewidth=0.5)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("images per cluster")
    ax.set_ylabel("clusters")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return to_data_uri(fig)


def centrality_grid(per_task: Mapping[str, tuple[np.ndarray, np.ndarray]], ncols: int = 4) -> str:
    """Per task: neighbour-centrality histogram of candidate images, selected ones on top."""
    fig, axes = _grid(len(per_task), ncols, 2.6, 2.0)
    for ax, (task, (scores, selected)) in zip(axes, per_task.items(), strict=True):
        scores = np.asarray(scores, dtype=float)
        sel = np.asarray(selected, dtype=bool)
        if len(scores):
            lo, hi = float(scores.min()), float(scores.max())
            bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 21)
            ax.hist(scores, bins=bins, color=POOL, label="candidates")
            if sel.any():
                ax.hist(scores[sel], bins=bins, color=SELECTED, label="selected")
        ax.set_title(task, loc="left")
        ax.tick_params(labelsize=7)
    if axes:
        axes[0].legend(fontsize=7, loc="upper left")
        fig.supxlabel("neighbour centrality (mean cosine similarity to 5 nearest neighbours in the cluster)", fontsize=8.5)
    fig.tight_layout()
    return to_data_uri(fig)


def pca_maps(per_task: Mapping[str, dict[str, Any]], ncols: int = 4) -> str:
    """Per task: PCA map of the image features; pool grey, reference black, selected blue."""
    fig, axes = _grid(len(per_task), ncols, 2.7, 2.6)
    for ax, (task, d) in zip(axes, per_task.items(), strict=True):
        xy, sel, ref = d["xy"], np.asarray(d["selected"], bool), np.asarray(d["reference"], bool)
        rest = ~(sel | ref)
        ax.scatter(xy[rest, 0], xy[rest, 1], s=6, color=POOL, linewidths=0, rasterized=True, label="pool")
        ax.scatter(xy[ref, 0], xy[ref, 1], s=14, marker="x", color=REFERENCE, linewidths=0.9, label="reference")
        ax.scatter(xy[sel, 0], xy[sel, 1], s=11, color=SELECTED, linewidths=0, label="selected")
        r1, r2 = d.get("variance", (0.0, 0.0))
        ax.set_title(task, loc="left")
        ax.set_xlabel(f"PC1 ({r1 * 100:.0f}%)", fontsize=7.5)
        ax.set_ylabel(f"PC2 ({r2 * 100:.0f}%)", fontsize=7.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    if axes:
        axes[0].legend(fontsize=7, loc="best", markerscale=1.4, handletextpad=0.2)
    fig.tight_layout()
    return to_data_uri(fig)


def loss_curves(groups: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]]) -> str:
    """One panel per group (reference model, final models); one line per log: loss against step."""
    fig, axes = _grid(len(groups), 2, 3.9, 2.7)
    for ax, (title, logs) in zip(axes, groups.items(), strict=True):
        for i, (name, (steps, loss)) in enumerate(logs.items()):
            steps, loss = np.asarray(steps, dtype=float), np.asarray(loss, dtype=float)
            c = SELECTED if len(logs) == 1 else task_color(i)
            ax.plot(steps, loss, color=c, linewidth=0.9, alpha=0.35 if len(steps) > 30 else 1.0,
                    label=None if len(steps) > 30 else name)
            if len(steps) > 30:  # a moving average reads better than raw noisy steps
                k = max(3, len(steps) // 25)
                smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
                ax.plot(steps[k - 1:], smooth, color=c, linewidth=1.8, label=name)
        ax.set_title(title, loc="left")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=7.5)
    fig.tight_layout()
    return to_data_uri(fig)


def timing_bars(timings: Mapping[str, float]) -> str:
    plt = _plt()
    names = list(timings)
    vals = np.asarray([float(timings[n]) for n in names])
    fig, ax = plt.subplots(figsize=(7.6, 0.36 * len(names) + 0.9))
    y = np.arange(len(names))
    ax.barh(y, vals, color=SELECTED, height=0.6)
    tot = float(vals.sum()) or 1.0
    for yi, v in enumerate(vals):
        ax.text(v + tot * 0.005, yi, f"{_fmt_seconds(v)}  ({v / tot * 100:.0f}%)", va="center", fontsize=7.5, color=INK)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, float(vals.max(initial=0.0)) * 1.25 + 1e-9)
    ax.set_xlabel("seconds")
    ax.grid(axis="y", visible=False)
    return to_data_uri(fig)


def _fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(round(s % 60))} s"
    return f"{int(s // 3600)} h {int(round(s % 3600 / 60))} min"
