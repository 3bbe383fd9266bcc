"""Task-wise, cluster-based selection with an exact budget (PreSel step 2) and its baselines.

Unit of selection: an *item* = (task, distinct image). Records of one task that share an image
are one item, whose id is the first such record id (manifest order). An image used by several
tasks is an item in each (clustered in each) but is selected at most once across tasks unless
``allow_repeats``.

Flow (:func:`select`, pure: no file IO):

1. budget ``B`` (fraction of distinct pool images, floored, or a count) includes the reference
   set; ``B_new = B - |D_ref|`` new images;
2. task quotas = ``allocate(B_new, task weights, available items per task)``;
3. per task: gather and L2-normalise its features, cluster, score items inside clusters;
4. tasks in order (weight desc, then name): cluster quotas = ``allocate(quota, available
   cluster sizes, images still free per cluster)``, best-ranked first, skipping images an
   earlier task took; any shortfall is re-allocated over the tasks with the same ``allocate``
   until the budget is met exactly.

Methods (same flow, different clusters/ranking inside step 3):

- ``presel``: k-means with ``C = round(n / images_per_cluster)`` on all items of the task
  (reference included); rank by neighbour centrality over the cluster's non-reference items.
- ``random-cluster``: the same clusters and cluster quotas, uniform (seeded) order inside.
- ``random``: no clustering (one group per task), uniform (seeded) order within the task quota.
- ``typiclust``: per task, k-means with ``C = task quota`` clusters fit on the task's available
  (non-reference) items (reference items get their nearest centroid); each cluster gets an equal
  share (so one image per cluster while quotas allow), the most *typical* first, typicality =
  ``1 / (mean Euclidean distance to the min(20, m // 2) nearest items of the cluster + 1e-5)``
  (TypiClust, Hacohen et al. 2022; TypiClust's code uses faiss squared L2 distances, we use
  Euclidean as the paper writes).
- ``presel-cover``: PreSel's clusters and quotas, order inside a cluster by greedy facility location
  (:mod:`presel.selection.methods`).
- ``herding``: no clusters; each task's quota filled by TypiClust (quota below 1.5% of the task),
  MaxHerding coverage on the task's kNN graph (up to 15%) or kernel herding (above)
  (:mod:`presel.selection.coverage`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from presel.config import neutral
from presel.errors import PreselError
from presel.records import Pool, image_key
from presel.selection.budget import allocate
from presel.selection.coverage import COVERAGE_METHODS
from presel.selection.methods import WITHIN_CLUSTER_METHODS
from presel.selection.result import SelectionResult  # shared with official
from presel.selection.result import task_weights as _task_weights

METHODS = ("presel", "random", "random-cluster", "typiclust", *WITHIN_CLUSTER_METHODS, *COVERAGE_METHODS)
TASK_WEIGHT_MODES = ("irs", "uniform", "size")
KMEANS_BACKENDS = ("faiss", "faiss-cpu", "faiss-gpu", "sklearn")
KMEANS_MODES = ("flat", "hierarchical", "auto")
OFFICIAL_QUOTAS = ("llava665k", "vision-flan")
# the settings that take one of a few names: checked in SelectConfig, offered as `presel select` choices
CHOICES = {"method": METHODS, "task_weights": TASK_WEIGHT_MODES, "kmeans_backend": KMEANS_BACKENDS,
           "kmeans": KMEANS_MODES, "official_quotas": OFFICIAL_QUOTAS}


@dataclass
class SelectConfig:
    """Settings of ``presel select``.

    budget: fraction of distinct pool images (reference set included), ``0 < f <= 1``; or
    budget_count: absolute number of images (reference set included). Exactly one is set.
    images_per_cluster: ``C = max(1, round(|T_i| / images_per_cluster))`` k-means clusters per task.
    k: neighbours for neighbour centrality.
    method: presel | presel-cover | herding | random | random-cluster | typiclust.
    task_weights: irs (from a weights file) | uniform | size (proportional to task item count).
    kmeans_backend: faiss (seeded; on the GPU when faiss has GPU support and sees a CUDA device) | faiss-cpu |
    faiss-gpu (an error without a usable GPU) | sklearn.
    kmeans_niter: faiss iterations (default 25); for sklearn a cap on max_iter (default: its own 300).
    seed: every random choice derives from it.
    allow_repeats: let an image used by several tasks be selected once per task.
    typiclust_k: neighbours for TypiClust typicality.
    protocol: paper (distinct images, this module) | official (the authors' code, counted in records:
    :mod:`presel.selection.official`).
    official_quotas: under ``protocol: official``, the authors' task-quota rule: llava665k (``kmeans_clust.py``:
    ``int(w * N)``, the shortfall to the top task) | vision-flan (``allocate_samples``: floor, largest remainder, caps).
    exclude: id list (record ids or image paths, e.g. a ``presel map`` lasso export): those images are left out
    of the pool before selecting (:mod:`presel.selection.pick_lists`).
    include: id list: those images are selected first, counted in the budget (their task's quota first).
    threads: tasks below ``PARALLEL_TASK_MAX`` images are scored this many at a time, one core each (threads;
    0 = one per core); larger tasks run one after the other, their hierarchical k-means groups this many at a
    time. Results are identical to ``threads=1``.
    kmeans: flat | hierarchical | auto: a task's k-means in one level, or two (coarse groups, then clusters
    inside each: :func:`presel.selection.kmeans.hierarchical_kmeans`); auto runs two levels for tasks of at
    least ``presel.selection.kmeans.AUTO_HIERARCHICAL_MIN`` images. Protocol official always runs flat.
    """

    budget: float | None = None
    budget_count: int | None = None
    images_per_cluster: int = 100
    k: int = 5
    method: str = "presel"
    task_weights: str = "irs"
    kmeans_backend: str = "faiss"
    kmeans_niter: int | None = None
    seed: int = 0
    allow_repeats: bool = False
    typiclust_k: int = 20
    protocol: str = "paper"
    official_quotas: str = "llava665k"
    exclude: str | None = None
    include: str | None = None
    kmeans: str = "auto"
    threads: int = neutral(0)

    def __post_init__(self) -> None:
        from presel.protocol import check_protocol

        check_protocol(self.protocol)
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise PreselError(f"{name}={getattr(self, name)!r} must be one of {', '.join(allowed)}")
        if (self.budget is None) == (self.budget_count is None):
            raise PreselError("give exactly one of budget (a fraction, e.g. 0.15) and budget_count (a number of images); "
                              f"got budget={self.budget}, budget_count={self.budget_count}")
        if self.budget is not None:
            if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) or not 0 < self.budget <= 1:
                raise PreselError(f"budget={self.budget} must be a fraction in (0, 1], e.g. 0.15; "
                                  "use budget_count for a number of images")
        if self.budget_count is not None and (isinstance(self.budget_count, bool) or not isinstance(self.budget_count, int)
                                              or self.budget_count < 1):
            raise PreselError(f"budget_count={self.budget_count} must be an integer >= 1")
        for name in ("images_per_cluster", "k", "typiclust_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PreselError(f"{name}={v} must be an integer >= 1")
        if self.kmeans_niter is not None and (not isinstance(self.kmeans_niter, int) or self.kmeans_niter < 1):
            raise PreselError(f"kmeans_niter={self.kmeans_niter} must be an integer >= 1 (or unset for the default)")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise PreselError(f"threads={self.threads} must be an integer >= 0 (0: one per core)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise PreselError(f"seed={self.seed} must be an integer >= 0")
        if self.include is not None and self.protocol == "official":
            raise PreselError("include is not part of protocol official (the authors' selection); use protocol paper")


@dataclass
class _Task:
    name: str
    records: int = 0
    ids: list[str] = field(default_factory=list)  # item ids
    images: list[str] = field(default_factory=list)  # item image paths (as first written)
    keys: list[str] = field(default_factory=list)  # item image keys
    rec_ids: list[list[str]] = field(default_factory=list)  # record ids per item (manifest order)
    # filled later
    img: np.ndarray | None = None  # global distinct-image index per item
    ref: np.ndarray | None = None  # bool per item
    labels: np.ndarray | None = None
    score: np.ndarray | None = None  # ranking score (nan where none)
    rank: np.ndarray | None = None  # 1-based rank in cluster among available items (0 = none)
    order: list[np.ndarray] | None = None  # per cluster: available item indices, best first
    cweights: np.ndarray | None = None  # allocation weight per cluster
    objective: float | None = None
    weight: float = 0.0
    quota: int = 0
    selected: np.ndarray | None = None


def _task_seed(seed: int, task: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(task.encode("utf-8"))) % (2**31 - 1)


def _items(pool: Pool, keys: list[str]) -> tuple[list[_Task], dict[str, int]]:
    tasks: dict[str, _Task] = {}
    pos: dict[tuple[str, str], int] = {}
    img_index: dict[str, int] = {}
    for r, key in zip(pool.records, keys):
        t = tasks.get(r.task)
        if t is None:
            t = tasks[r.task] = _Task(r.task)
        t.records += 1
        if key not in img_index:
            img_index[key] = len(img_index)
        j = pos.get((r.task, key))
        if j is None:
            pos[(r.task, key)] = len(t.ids)
            t.ids.append(r.id)
            t.images.append(r.image)
            t.keys.append(key)
            t.rec_ids.append([r.id])
        else:
            t.rec_ids[j].append(r.id)
    out = list(tasks.values())
    for t in out:
        t.img = np.fromiter((img_index[k] for k in t.keys), dtype=np.int64, count=len(t.keys))
    return out, img_index


def _budget(cfg: SelectConfig, n_images: int) -> int:
    if cfg.budget_count is not None:
        return int(cfg.budget_count)
    return int(Fraction(repr(float(cfg.budget))) * n_images // 1)  # exact floor(f * N), no float drift


def _resolve_reference(pool: Pool, keys: list[str], reference: Iterable[str], source: str) -> dict[str, tuple[str, str]]:
    """image key -> (task, record id) of each distinct reference image, in reference order."""
    by_id = pool.by_id()
    first_by_key: dict[str, int] | None = None  # built only if some reference id is an image path
    out: dict[str, tuple[str, str]] = {}
    seen: set[str] = set()
    for rid in reference:
        rid = str(rid)
        if rid in seen:
            raise PreselError(f"{source}: duplicate reference id '{rid}'; list each reference image once")
        seen.add(rid)
        i = by_id.get(rid)
        if i is None:
            if first_by_key is None:
                first_by_key = {}
                for j, k in enumerate(keys):
                    first_by_key.setdefault(k, j)
            i = first_by_key.get(image_key(rid))
        if i is None:
            raise PreselError(f"{source}: reference id '{rid}' is not in the pool {pool.source} (neither a record id nor "
                              "an image path); the reference set must be drawn from the pool: fix the id or the --pool")
        rec = pool.records[i]
        out.setdefault(keys[i], (rec.task, rec.id))
    return out


def _feature_rows(features, tasks: list[_Task]) -> list[np.ndarray]:
    index = features.index
    by_image: dict[str, int] = {}
    rows_per_task = []
    missing: list[tuple[str, str]] = []
    n_missing = 0
    pending: list[tuple[int, int, str]] = []
    for ti, t in enumerate(tasks):
        rows = np.full(len(t.ids), -1, dtype=np.int64)
        for j, (rids, key) in enumerate(zip(t.rec_ids, t.keys)):
            row = next((index[r] for r in rids if r in index), None)
            if row is None:
                row = index.get(key)
            if row is None:
                pending.append((ti, j, key))
            else:
                rows[j] = row
                by_image.setdefault(key, row)
        rows_per_task.append(rows)
    for ti, j, key in pending:  # another record of the same image may carry the features
        row = by_image.get(key)
        if row is None:
            n_missing += 1
            if len(missing) < 5:
                missing.append((tasks[ti].ids[j], tasks[ti].images[j]))
        else:
            rows_per_task[ti][j] = row
    if n_missing:
        shown = ", ".join(f"'{i}' ({img})" for i, img in missing)
        raise PreselError(f"{features.source}: no features for {n_missing} pool image(s), e.g. id {shown}; features are "
                          "looked up by record id, then by image path: embed the whole pool (presel embed) or pass the "
                          "matching --features/--feature-ids")
    return rows_per_task


def _load_task_matrix(features, rows: np.ndarray, t: _Task) -> np.ndarray:
    x = features.rows(rows)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        j = int(np.nonzero(~finite)[0][0])
        raise PreselError(f"{features.source}: features of id '{t.ids[j]}' (image {t.images[j]}) contain NaN or inf"
                          f"{f' ({int((~finite).sum())} rows of task {t.name} do)' if (~finite).sum() > 1 else ''}; "
                          "re-extract the features of those images")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    zero = norms == 0
    if zero.any():
        j = int(np.nonzero(zero)[0][0])
        raise PreselError(f"{features.source}: features of id '{t.ids[j]}' (image {t.images[j]}) are a zero vector and "
                          "cannot be L2-normalised; re-extract the features of that image")
    x /= norms.astype(np.float32)[:, None]
    return x


def _cluster_orders(labels: np.ndarray, avail: np.ndarray, key_fn) -> tuple[list[np.ndarray], np.ndarray]:
    """Per cluster: available members sorted by ``key_fn(members)`` (a lexsort key tuple); and ranks."""
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    rank = np.zeros(len(labels), dtype=np.int64)
    orders: list[np.ndarray] = []
    members_all = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[members_all], np.arange(n_clusters + 1))
    for c in range(n_clusters):
        mem = members_all[bounds[c]:bounds[c + 1]]
        mem = mem[avail[mem]]
        if len(mem):
            mem = mem[np.lexsort(key_fn(mem))]
            rank[mem] = np.arange(1, len(mem) + 1)
        orders.append(mem)
    return orders, rank


def _per_cluster(labels: np.ndarray, avail: np.ndarray, fn, out: np.ndarray) -> None:
    """``out[members] = fn(members)`` for the available members of each cluster (one BLAS thread:
    clusters are small, and threads on tiny products only add contention)."""
    from threadpoolctl import threadpool_limits

    members = np.nonzero(avail)[0]
    members = members[np.argsort(labels[members], kind="stable")]
    bounds = np.flatnonzero(np.diff(labels[members])) + 1
    with threadpool_limits(1, user_api="blas"):
        for mem in np.split(members, bounds):
            if len(mem):
                out[mem] = fn(mem)


def _score_task(t: _Task, x: np.ndarray, cfg: SelectConfig, workers: int = 1) -> None:
    """Clusters, scores and per-cluster orders of one task (fills t.labels/score/rank/order/cweights)."""
    from presel.selection.baselines import random_order, typiclust_clusters
    from presel.selection.centrality import neighbour_centrality, typicality
    from presel.selection.kmeans import cluster, n_clusters_for

    n = len(t.ids)
    avail = ~t.ref
    score = np.full(n, np.nan)
    seed = _task_seed(cfg.seed, t.name)
    method = cfg.method
    if method == "herding":  # by the task's quota: TypiClust, MaxHerding or kernel herding (selection/coverage.py)
        from presel.selection.coverage import herding_stage

        stage = herding_stage(t.quota, int(avail.sum()))
        method = "typiclust" if stage == "typiclust" else method
    if method in ("presel", "random-cluster", *WITHIN_CLUSTER_METHODS):
        km = cluster(x, n_clusters_for(n, cfg.images_per_cluster), mode=cfg.kmeans, backend=cfg.kmeans_backend,
                     seed=seed, niter=cfg.kmeans_niter, workers=workers)
        labels, t.objective = km.labels, km.objective
    elif method in ("random", *COVERAGE_METHODS):
        labels = np.zeros(n, dtype=np.int64)
    else:  # typiclust
        labels, t.objective = typiclust_clusters(x, avail, t.quota, backend=cfg.kmeans_backend, seed=seed,
                                                 niter=cfg.kmeans_niter)
    if method in COVERAGE_METHODS:  # coverage on the task's kNN graph (selection/coverage.py)
        from presel.selection.coverage import coverage_positions

        steps = min(n, t.quota + max(16, t.quota // 4))  # greedy prefix; beyond it, by last gain
        score, pos = coverage_positions(stage, x, avail, steps, seed=seed)

        def key(mem):
            return (pos[mem],)
    elif method in WITHIN_CLUSTER_METHODS:  # PreSel's clusters, another order inside (selection/methods.py)
        from presel.selection.methods import within_cluster_ranks

        score, pos = within_cluster_ranks(method, x, labels, avail, cfg.k)

        def key(mem):
            return (pos[mem],)
    elif method in ("presel", "typiclust"):
        if method == "presel":
            _per_cluster(labels, avail, lambda mem: neighbour_centrality(x[mem], cfg.k), score)
        else:
            _per_cluster(labels, avail, lambda mem: typicality(x[mem], cfg.typiclust_k), score)
        id_rank = np.empty(n, dtype=np.int64)
        id_rank[np.argsort(np.asarray(t.ids, dtype=str), kind="stable")] = np.arange(n)

        def key(mem):  # highest score first, ties by id
            return (id_rank[mem], -score[mem])
    else:
        perm = random_order(n, cfg.seed, t.name)

        def key(mem):
            return (perm[mem],)
    t.labels = labels
    t.score = score
    t.order, t.rank = _cluster_orders(labels, avail, key)
    sizes = np.array([len(o) for o in t.order], dtype=np.float64)
    t.cweights = (sizes > 0).astype(np.float64) if method == "typiclust" else sizes


PARALLEL_TASK_MAX = 20_000  # tasks this small are scored side by side (one core each) when threads > 1


def _score_tasks(features, tasks: list[_Task], rows: list[np.ndarray], cfg: SelectConfig) -> None:
    """Score every task: the large ones one at a time on all cores, the small ones ``cfg.threads`` at a time.

    Features are gathered task by task from the (memory-mapped) matrix as float32 and dropped after scoring,
    so at most one large task's matrix (plus ``workers`` small ones) is in memory at once."""
    import os

    from presel.selection.kmeans import map_threads

    workers = cfg.threads or os.cpu_count() or 1
    small = [i for i, t in enumerate(tasks) if len(t.ids) < PARALLEL_TASK_MAX] if workers > 1 else []
    if len(small) < 2:
        small = []

    def one(i: int) -> None:
        x = _load_task_matrix(features, rows[i], tasks[i])
        _score_task(tasks[i], x, cfg, workers=1 if i in small else workers)

    for i in range(len(tasks)):
        if i not in small:
            one(i)
    if small:
        map_threads(one, small, workers, cfg.kmeans_backend)


def _take(t: _Task, n: int, taken: np.ndarray | None) -> int:
    """Select up to ``n`` more items of task ``t``: cluster quotas by allocate, best-ranked free items first."""
    if n <= 0:
        return 0
    free = ~t.selected & ~t.ref
    if taken is not None:
        free &= ~taken[t.img]
    cap = np.array([int(free[o].sum()) for o in t.order], dtype=np.int64)
    n = min(n, int(cap.sum()))
    if n == 0:
        return 0
    alloc = allocate(n, t.cweights, cap)
    got = 0
    for c in np.nonzero(alloc)[0]:
        o = t.order[c]
        pick = o[free[o]][: alloc[c]]
        t.selected[pick] = True
        if taken is not None:
            taken[t.img[pick]] = True
        got += len(pick)
    return got


def select(pool: Pool, features, *, weights: Mapping[str, Any] | None = None, reference: Iterable[str] = (),
           config: SelectConfig, weights_source: str = "weights", reference_source: str = "reference",
           include: Iterable[str] = ()) -> SelectionResult:
    """Select images from ``pool`` with ``features`` (a :class:`presel.io.features.FeatureMatrix`).

    ``weights``: raw task weights (``task -> number`` or ``task -> {"weight": ...}``), needed when
    ``config.task_weights == "irs"``. ``reference``: record ids or image paths of the reference set.
    ``*_source`` name the inputs in error messages. ``include``: record ids selected first, counted in the
    budget (:mod:`presel.selection.pick_lists` resolves ``config.include`` to them). Pure: reads no files,
    writes nothing.
    """
    from presel.selection.duplicates import content_keys

    cfg = config
    if cfg.protocol == "official":
        from presel.selection.official import select_official

        return select_official(pool, features, weights=weights, reference=reference, config=cfg,
                               weights_source=weights_source, reference_source=reference_source)
    keys, content_dups = content_keys(pool, features)  # byte-identical images under several paths: one image
    tasks, img_index = _items(pool, keys)
    n_images = len(img_index)
    refs = _resolve_reference(pool, keys, reference, reference_source)
    del keys
    ref_mask = np.zeros(n_images, dtype=bool)
    for key in refs:
        ref_mask[img_index[key]] = True
    for t in tasks:
        t.ref = ref_mask[t.img]
        t.selected = np.zeros(len(t.ids), dtype=bool)
    n_ref = len(refs)
    what = f"budget_count={cfg.budget_count}" if cfg.budget_count is not None else f"budget={cfg.budget}"
    budget, new_budget, cap = _check_budget(cfg, tasks, pool.source, n_images, n_ref, what, reference_source)
    w = _task_weights(cfg, tasks, weights, weights_source)
    quotas = allocate(new_budget, w, cap)
    for t, wt, q in zip(tasks, w, quotas):
        t.weight, t.quota = float(wt), int(q)
    forced = _force(pool, tasks, include, new_budget, what)

    _score_tasks(features, tasks, _feature_rows(features, tasks), cfg)

    order = sorted(range(len(tasks)), key=lambda i: (-tasks[i].weight, tasks[i].name))
    taken = None if cfg.allow_repeats else np.zeros(n_images, dtype=bool)
    remaining = new_budget - int(forced.sum())
    want = np.maximum(0, quotas - forced)
    if want.sum() > remaining:  # forced images beyond their task's quota: the other tasks give way in proportion
        want = allocate(remaining, want.astype(np.float64), want)
    for t in tasks:
        if taken is not None:
            taken[t.img[t.selected]] = True
    for i in order:
        remaining -= _take(tasks[i], int(want[i]), taken)
    rounds = 1
    while remaining > 0:
        free_cap = np.array([int((~t.selected & ~t.ref & (True if taken is None else ~taken[t.img])).sum())
                             for t in tasks], dtype=np.int64)
        if free_cap.sum() == 0:  # pragma: no cover - excluded by the availability check above
            raise PreselError(f"cannot place {remaining} more images: no available image left; lower the budget")
        extra = allocate(min(remaining, int(free_cap.sum())), w, free_cap)
        for i in order:
            remaining -= _take(tasks[i], int(extra[i]), taken)
        rounds += 1
    result = _result(pool, tasks, refs, cfg, budget=budget, new_budget=new_budget, n_images=n_images, rounds=rounds)
    result.summary["totals"]["content_duplicate_images"] = content_dups
    if forced.sum():
        result.summary["totals"]["included_images"] = int(forced.sum())
        for t, f in zip(tasks, forced):
            result.summary["tasks"][t.name]["included"] = int(f)
    return result


def _check_budget(cfg: SelectConfig, tasks: list[_Task], source: str, n_images: int, n_ref: int, what: str,
                  reference_source: str) -> tuple[int, int, np.ndarray]:
    """The budget in images, the new images beyond the reference set, and each task's capacity; an error when
    the budget does not fit the pool."""
    budget = _budget(cfg, n_images)
    if budget > n_images:
        raise PreselError(f"{what} means {budget} images but the pool {source} has only {n_images} distinct images; "
                          "lower the budget")
    if budget <= n_ref:
        raise PreselError(f"{what} means {budget} images, not larger than the reference set ({n_ref} distinct images in "
                          f"{reference_source}); the budget includes the reference set: raise it above {n_ref}")
    new_budget = budget - n_ref
    cap = np.array([int((~t.ref).sum()) for t in tasks], dtype=np.int64)
    available_images = int(cap.sum()) if cfg.allow_repeats else n_images - n_ref
    if new_budget > available_images:
        raise PreselError(f"{what} needs {new_budget} new images beyond the {n_ref} reference images but only "
                          f"{available_images} are available; lower the budget")
    return budget, new_budget, cap


def _force(pool: Pool, tasks: list[_Task], include: Iterable[str], new_budget: int, what: str) -> np.ndarray:
    """Mark the items of the ``include`` record ids selected; per task, how many were forced in."""
    forced = np.zeros(len(tasks), dtype=np.int64)
    ids = list(include)
    if not ids:
        return forced
    by_id = pool.by_id()
    where = {(t.name, rid): (ti, j) for ti, t in enumerate(tasks) for j, rids in enumerate(t.rec_ids) for rid in rids}
    seen_img: set[int] = set()
    for rid in ids:
        rec = pool.records[by_id[rid]]
        ti, j = where[(rec.task, rid)]
        t = tasks[ti]
        if t.ref[j] or int(t.img[j]) in seen_img:
            continue  # a reference image (checked by the caller) or an image already forced in by another id
        seen_img.add(int(t.img[j]))
        t.selected[j] = True
        forced[ti] += 1
    if forced.sum() > new_budget:
        raise PreselError(f"{what} leaves {new_budget} images beyond the reference set, but --include forces "
                          f"{int(forced.sum())} in; raise the budget or include fewer images")
    return forced


def _result(pool: Pool, tasks: list[_Task], refs: dict[str, tuple[str, str]], cfg: SelectConfig, *, budget: int,
            new_budget: int, n_images: int, rounds: int) -> SelectionResult:
    is_presel = cfg.method == "presel"
    task_pos = {t.name: i for i, t in enumerate(tasks)}
    item_pos = [{k: j for j, k in enumerate(t.keys)} for t in tasks]

    def fnum(v: float) -> float | None:
        return None if np.isnan(v) else float(v)

    sel_rows: list[tuple] = []
    for key, (task, _rid) in refs.items():
        ti = task_pos[task]
        j = item_pos[ti][key]
        t = tasks[ti]
        sel_rows.append((ti, int(t.labels[j]), 0, 0, t.ids[j], t.images[j], t.name, None, None, "reference"))
    for ti, t in enumerate(tasks):
        for j in np.nonzero(t.selected)[0]:
            s = fnum(t.score[j])
            sel_rows.append((ti, int(t.labels[j]), 1, int(t.rank[j]), t.ids[j], t.images[j], t.name,
                             s if is_presel else None, s, "selected"))
    sel_rows.sort(key=lambda r: (r[0], r[1], r[2], r[3], r[4]))
    selection = {"id": [r[4] for r in sel_rows], "image": [r[5] for r in sel_rows], "task": [r[6] for r in sel_rows],
                 "cluster": [r[1] for r in sel_rows], "nc_score": [r[7] for r in sel_rows],
                 "score": [r[8] for r in sel_rows], "rank": [r[3] if r[9] == "selected" else None for r in sel_rows],
                 "source": [r[9] for r in sel_rows]}

    cols: dict[str, list] = {k: [] for k in ("id", "image", "task", "cluster", "nc_score", "score", "rank",
                                             "selected", "reference")}
    per_task = {}
    for t in tasks:
        score = [None if r else fnum(s) for s, r in zip(t.score.tolist(), t.ref.tolist())]
        cols["id"].extend(t.ids)
        cols["image"].extend(t.images)
        cols["task"].extend([t.name] * len(t.ids))
        cols["cluster"].extend(t.labels.tolist())
        cols["nc_score"].extend(score if is_presel else [None] * len(t.ids))
        cols["score"].extend(score)
        cols["rank"].extend([int(r) if r > 0 else None for r in t.rank.tolist()])
        cols["selected"].extend(t.selected.tolist())
        cols["reference"].extend(t.ref.tolist())
        per_task[t.name] = {
            "records": t.records, "images": len(t.ids), "reference": int(t.ref.sum()),
            "available": int((~t.ref).sum()), "clusters": int(t.labels.max()) + 1 if len(t.labels) else 0,
            "weight": t.weight, "quota": t.quota, "selected": int(t.selected.sum()),
            "kmeans_objective": t.objective,
        }
    objectives = [t.objective for t in tasks if t.objective is not None]
    n_selected = sum(int(t.selected.sum()) for t in tasks)
    summary = {
        "method": cfg.method,
        "task_weights": cfg.task_weights,
        "tasks": per_task,
        "totals": {
            "records": len(pool.records), "distinct_images": n_images, "text_only_records": pool.text_only,
            "tasks": len(tasks), "budget": budget, "reference": len(refs), "new_budget": new_budget,
            "selected": n_selected, "total": len(refs) + n_selected,
            "kmeans_objective": float(sum(objectives)) if objectives else None,
            "allocation_rounds": rounds,
        },
    }
    return SelectionResult(selection, cols, summary, cfg)


SELECTION_SCHEMA = (("id", "string"), ("image", "string"), ("task", "string"), ("cluster", "int64"),
                    ("nc_score", "float64"), ("score", "float64"), ("rank", "int64"), ("source", "string"))
ASSIGNMENT_SCHEMA = (("id", "string"), ("image", "string"), ("task", "string"), ("cluster", "int64"),
                     ("nc_score", "float64"), ("score", "float64"), ("rank", "int64"), ("selected", "bool_"),
                     ("reference", "bool_"))


def _table(cols: dict[str, list], schema):
    import pyarrow as pa

    return pa.table({name: pa.array(cols[name], type=getattr(pa, typ)()) for name, typ in schema})


def write_selection(result: SelectionResult, out_dir, *, extra_config: dict[str, Any] | None = None) -> None:
    """Write selection.parquet/.jsonl, assignments.parquet, summary.json and config.json into ``out_dir``."""
    from pathlib import Path

    from presel.config import resolved_config
    from presel.io.atomic import write_json, write_jsonl, write_parquet

    out = Path(out_dir)
    sel = result.selection
    write_parquet(out / "selection.parquet", _table(sel, SELECTION_SCHEMA))
    names = [n for n, _ in SELECTION_SCHEMA]
    write_jsonl(out / "selection.jsonl", ({n: sel[n][i] for n in names} for i in range(len(sel["id"]))))
    write_parquet(out / "assignments.parquet", _table(result.assignments, ASSIGNMENT_SCHEMA))
    write_json(out / "summary.json", result.summary)
    write_json(out / "config.json", resolved_config("select", result.config, **(extra_config or {})))


def _pick_lists(pool: Pool, config: SelectConfig, reference: list[str]) -> dict[str, Any]:
    """``config.exclude`` / ``config.include`` resolved against the pool (unknown ids: a located error)."""
    from presel.selection.pick_lists import check_against_reference, check_disjoint, resolve_pick_list

    lists = {name: resolve_pick_list(pool, path, f"--{name}") for name, path in
             (("exclude", config.exclude), ("include", config.include)) if path is not None}
    check_against_reference(list(lists.values()), reference, pool)
    if len(lists) == 2:
        check_disjoint(lists["exclude"], lists["include"])
    return lists


def select_to_dir(pool: Pool, features, weights_path=None, reference_path=None, config: SelectConfig | None = None,
                  out=None, overwrite: bool = False, dedup=None) -> dict[str, Any]:
    """Read the weights and reference files, :func:`select`, write everything to ``out`` atomically.

    Returns the summary. Nothing is left in ``out`` if anything fails.
    """
    from presel.io.atomic import atomic_dir

    if config is None or out is None:
        raise TypeError("select_to_dir needs config and out")
    weights = None
    if weights_path is not None and config.task_weights == "irs":
        from presel.selection.weights_io import read_weights_file

        weights = read_weights_file(weights_path)
    reference: list[str] = []
    if reference_path is not None:
        from presel.io.manifest import read_id_list

        reference = read_id_list(reference_path)
    # images that feature extraction rejected (unreadable, bombs, ...) cannot be clustered: leave them out, counted
    rejected: dict[str, str] = {}
    src = Path(str(getattr(features, "source", "")))
    if src.is_dir():
        from presel.features.store import rejected_images

        rejected = rejected_images(src)
    lists = _pick_lists(pool, config, reference)  # --exclude / --include, checked against the whole pool
    dropped = [r for r, k in zip(pool.records, pool.image_keys()) if k in rejected] if rejected else []
    if dropped:
        pool = Pool([r for r, k in zip(pool.records, pool.image_keys()) if k not in rejected], pool.source,
                    pool.image_root, text_only=pool.text_only, format=pool.format)
    if "exclude" in lists:
        from presel.selection.pick_lists import drop_excluded

        pool, excl_stats = drop_excluded(pool, lists["exclude"])
    gone = {k: f"feature extraction rejected it ({why})" for k, why in rejected.items()}
    dedup_stats: dict[str, int] = {}
    if dedup is not None:  # near-duplicates: one image per group of `presel dedup`
        from presel.selection.duplicates import apply_dedup

        before = {r.image_key for r in pool.records}
        pool, dedup_stats = apply_dedup(pool, dedup)
        gone.update((k, f"a near-copy that --dedup {dedup} leaves out") for k in before - {r.image_key for r in pool.records})
    include: list[str] = []
    if "include" in lists:
        from presel.selection.pick_lists import included_records

        include = included_records(pool, lists["include"], gone)
    result = select(pool, features, weights=weights, reference=reference, config=config,
                    weights_source=str(weights_path) if weights_path is not None else "weights",
                    reference_source=str(reference_path) if reference_path is not None else "reference",
                    include=include)
    for name, pl in lists.items():
        result.summary[name] = pl.summary()
    if "exclude" in lists:
        result.summary["totals"].update(excl_stats)
    if dropped:
        result.summary["totals"]["rejected_images"] = len({r.image_key for r in dropped})
        result.summary["totals"]["rejected_records"] = len(dropped)
    result.summary["totals"].update(dedup_stats)
    inputs = {"pool": str(pool.source), "image_root": str(pool.image_root),
              **{name: str(pl.path) for name, pl in lists.items()},
              "features": str(getattr(features, "source", "features")),
              "weights": None if weights_path is None else str(weights_path),
              "reference": None if reference_path is None else str(reference_path),
              **({"dedup": str(dedup)} if dedup is not None else {})}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_selection(result, tmp, extra_config={"inputs": inputs})
    return result.summary
