"""k-means behind one interface: faiss (default, seeded) or scikit-learn.

Both backends return the same :class:`KMeansResult`: labels relabelled canonically (clusters
numbered by their first member, empty clusters dropped), centroids in that order, and the
objective (sum of squared Euclidean distances of the points to their assigned centroid).

faiss-cpu wheels bundle an old OpenBLAS that, on CPUs it does not recognise, falls back to a
slow generic kernel. :func:`_import_faiss` picks the kernel from ``/proc/cpuinfo`` unless the
environment already sets ``OPENBLAS_CORETYPE``; the variable is removed again after the import so
child processes are not affected.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

from presel.errors import PreselError

BACKENDS = ("faiss", "faiss-cpu", "faiss-gpu", "sklearn")
MODES = ("flat", "hierarchical", "auto")
# `auto` runs hierarchical k-means for tasks of at least this many points. Measured on 2 loaded cores
# (benchmarks/select_bench.py --hier-sweep, README "Selection at scale"): up to 114K points flat k-means costs no
# more CPU than two levels (faiss stops flat Lloyd after ~6 iterations) and two levels cost 0.5-4% objective, so
# auto stays flat there; two levels pay where flat's n^2/100 work dominates (a 950K task: ~40x fewer FLOPs).
AUTO_HIERARCHICAL_MIN = 200_000
DEFAULT_FAISS_NITER = 25
# faiss stops once the objective improves by less than this fraction in one iteration; 1e-4 saves
# ~2 of ~9 iterations on the benchmark data with the same objective to 6 digits
FAISS_EARLY_STOP = 1e-4


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _openblas_coretype() -> str | None:
    flags = _cpu_flags()
    if "avx512f" in flags:
        return "SkylakeX"
    if "avx2" in flags:
        return "Haswell"
    return None


def _import_faiss():
    """Import faiss with a sensible OpenBLAS kernel (see the module docstring)."""
    if "faiss" in sys.modules:
        return sys.modules["faiss"]
    if "OPENBLAS_CORETYPE" in os.environ:
        import faiss

        return faiss
    core = _openblas_coretype()
    if core is None:
        import faiss

        return faiss
    os.environ["OPENBLAS_CORETYPE"] = core
    try:
        import faiss
    finally:
        os.environ.pop("OPENBLAS_CORETYPE", None)
    return faiss


def faiss_gpus() -> int:
    """CUDA devices this faiss can use (0 for a CPU-only faiss build or without a device)."""
    faiss = _import_faiss()
    get = getattr(faiss, "get_num_gpus", None)
    if get is None or not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(get())
    except Exception:  # noqa: BLE001 - a broken CUDA setup means no GPU here
        return 0


def resolve_backend(backend: str) -> str:
    """``faiss``: faiss on the GPU when this faiss has GPU support and sees a CUDA device, else on the CPU;
    ``faiss-gpu`` insists on the GPU (a clear error without one); ``faiss-cpu`` and ``sklearn`` as named."""
    if backend not in BACKENDS:
        raise PreselError(f"kmeans_backend={backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "faiss":
        return "faiss-gpu" if faiss_gpus() > 0 else "faiss-cpu"
    if backend == "faiss-gpu" and faiss_gpus() == 0:
        faiss = _import_faiss()
        why = ("this faiss build has no GPU support" if not hasattr(faiss, "StandardGpuResources")
               else "faiss sees no CUDA device")
        raise PreselError(f"kmeans_backend=faiss-gpu: {why} (faiss {getattr(faiss, '__version__', '?')}); install a "
                          "CUDA build of faiss (pip install faiss-gpu-cu12, or conda's faiss-gpu) on a machine with an "
                          "NVIDIA GPU, or use --kmeans-backend faiss (GPU when there is one, else CPU)")
    return backend


@dataclass(frozen=True)
class KMeansResult:
    labels: np.ndarray  # int64 (n,), clusters numbered 0..C-1 by first member
    centroids: np.ndarray  # float32 (C, d)
    objective: float  # sum of squared distances to the assigned centroid

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])


def n_clusters_for(n: int, images_per_cluster: int) -> int:
    """``C = max(1, round(n / images_per_cluster))``, never more than ``n``."""
    if n <= 0:
        return 0
    return int(min(n, max(1, round(n / images_per_cluster))))


def _canonical(labels: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Number clusters by their first member (lowest index); drop empty ones."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    uniq, first = np.unique(labels, return_index=True)
    order = uniq[np.argsort(first, kind="stable")]
    remap = np.full(centroids.shape[0], -1, dtype=np.int64)
    remap[order] = np.arange(len(order), dtype=np.int64)
    return remap[labels], np.ascontiguousarray(centroids[order], dtype=np.float32)


def _assign(x: np.ndarray, centroids: np.ndarray, block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid and squared distance for each row (blocked, float32 matmul, float64 sums)."""
    c2 = np.einsum("ij,ij->i", centroids, centroids)
    labels = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x), dtype=np.float64)
    for s in range(0, len(x), block):
        xb = x[s:s + block]
        d = c2[None, :] - 2.0 * (xb @ centroids.T)
        j = np.argmin(d, axis=1)
        labels[s:s + block] = j
        x2 = np.einsum("ij,ij->i", xb, xb).astype(np.float64)
        dist[s:s + block] = np.maximum(x2 + d[np.arange(len(xb)), j].astype(np.float64), 0.0)
    return labels, dist


def kmeanspp_init(x: np.ndarray, n_clusters: int, rng: np.random.Generator, *, sample_per_cluster: int = 20,
                  dim: int = 64) -> np.ndarray:
    """Greedy k-means++ seeding (as scikit-learn: ``2 + ln C`` trials per step), made cheap.

    Runs on a random subsample of ``sample_per_cluster * C`` rows projected on their top ``dim``
    principal components (randomised power iteration): the sequential D^2 sampling is
    memory-bound, and 64 dimensions keep its working set in cache. Returns the chosen rows in full dimension (float32, C x d).
    """
    from threadpoolctl import threadpool_limits

    n, d = x.shape
    s = min(n, max(n_clusters, sample_per_cluster * n_clusters))
    idx = np.sort(rng.choice(n, size=s, replace=False)) if s < n else np.arange(n)
    sub = np.asarray(x[idx], dtype=np.float32)
    if d > dim:
        mu = sub.mean(axis=0, dtype=np.float64).astype(np.float32)
        cen = sub - mu
        cov = cen.T @ cen
        # top principal subspace by randomised range finding (a full eigh of d x d is far slower)
        q = rng.standard_normal((d, dim)).astype(np.float32)
        with threadpool_limits(1, user_api="blas"):  # small LAPACK calls: threads only add contention
            for _ in range(3):
                q, _ = np.linalg.qr(cov @ q)
        z = np.ascontiguousarray(cen @ q.astype(np.float32))
        del cen
    else:
        z = sub
    with threadpool_limits(1, user_api="blas"):  # the sequential loop is many tiny products
        return _kmeanspp_loop(sub, z, n_clusters, rng)


def _kmeanspp_loop(sub: np.ndarray, z: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    s = z.shape[0]
    zn = np.einsum("ij,ij->i", z, z)
    n_trials = 2 + int(np.log(n_clusters))
    chosen = np.empty(n_clusters, dtype=np.int64)
    chosen[0] = rng.integers(s)
    closest = np.maximum(zn + zn[chosen[0]] - 2.0 * (z @ z[chosen[0]]), 0.0)
    pot = float(closest.sum(dtype=np.float64))
    for c in range(1, n_clusters):
        if pot <= 0.0:  # every point coincides with a centre already: take unchosen rows in order
            rest = np.setdiff1d(np.arange(s), chosen[:c])[: n_clusters - c]
            chosen[c:c + len(rest)] = rest
            break
        r = rng.random(n_trials) * pot
        cand = np.minimum(np.searchsorted(np.cumsum(closest, dtype=np.float64), r), s - 1)
        dd = np.maximum(zn[cand][:, None] + zn[None, :] - 2.0 * (z[cand] @ z.T), 0.0)
        np.minimum(closest[None, :], dd, out=dd)
        pots = dd.sum(axis=1, dtype=np.float64)
        best = int(np.argmin(pots))
        chosen[c] = cand[best]
        closest = dd[best]
        pot = float(pots[best])
    return np.ascontiguousarray(sub[chosen], dtype=np.float32)


def kmeans(x: np.ndarray, n_clusters: int, *, backend: str = "faiss", seed: int = 0,
           niter: int | None = None) -> KMeansResult:
    """Cluster the rows of ``x`` (float32, n x d) into ``n_clusters``.

    faiss (GPU when faiss has GPU support and sees a CUDA device, else CPU: :func:`resolve_backend`),
    faiss-cpu, faiss-gpu: greedy k-means++ seeding (:func:`kmeanspp_init`, seeded) then Lloyd iterations on all
    points (no subsampling); ``niter`` caps the iterations (default 25; it stops earlier once an
    iteration improves the objective by less than 1e-4 relative, typically after ~7, where faiss
    has ``early_stop_threshold``).
    Measured with ``benchmarks/select_bench.py`` (``--niter-sweep`` and the main table): the
    objective lands within about 1% of scikit-learn's KMeans defaults, usually below it. faiss's plain random seeding was 2-12% worse on clustered
    data, hence the k-means++ seeding.

    sklearn: ``KMeans(n_clusters, random_state=seed)`` with its defaults (k-means++,
    ``max_iter=300``, ``tol=1e-4``, ``n_init='auto'``) unless ``niter`` caps ``max_iter``.

    Results are deterministic for a seed and a thread count (BLAS sums may differ in the last
    bits between thread counts).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    if backend not in BACKENDS:
        raise PreselError(f"kmeans_backend={backend!r} is not one of {', '.join(BACKENDS)}")
    if not 1 <= n_clusters <= n:
        raise PreselError(f"n_clusters={n_clusters} must be between 1 and n_samples={n}")
    if n_clusters == 1:
        c = x.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
        labels = np.zeros(n, dtype=np.int64)
        return KMeansResult(labels, c, float(((x.astype(np.float64) - c) ** 2).sum()))
    backend = resolve_backend(backend)
    if backend in ("faiss-cpu", "faiss-gpu"):
        faiss = _import_faiss()
        extra = {"early_stop_threshold": FAISS_EARLY_STOP} if hasattr(faiss.ClusteringParameters(),
                                                                      "early_stop_threshold") else {}
        if backend == "faiss-gpu":
            extra["gpu"] = True
        km = faiss.Kmeans(x.shape[1], int(n_clusters), niter=int(niter or DEFAULT_FAISS_NITER), seed=int(seed),
                          max_points_per_centroid=max(256, n // n_clusters + 1), min_points_per_centroid=1,
                          verbose=False, **extra)
        init = kmeanspp_init(x, int(n_clusters), np.random.default_rng(int(seed)))
        km.train(x, init_centroids=init)
        centroids = np.asarray(km.centroids, dtype=np.float32)
        dist, idx = km.index.search(x, 1)
        labels = idx[:, 0].astype(np.int64)
        objective = float(np.maximum(dist[:, 0].astype(np.float64), 0.0).sum())
    else:
        from sklearn.cluster import KMeans

        kw = {"max_iter": int(niter)} if niter else {}
        km = KMeans(n_clusters=int(n_clusters), random_state=int(seed), **kw).fit(x)
        centroids = np.asarray(km.cluster_centers_, dtype=np.float32)
        labels = km.labels_.astype(np.int64)
        objective = float(km.inertia_)
    labels, centroids = _canonical(labels, centroids)
    return KMeansResult(labels, centroids, objective)


def _seed_for(seed: int, group: int) -> int:
    return (int(seed) * 1_000_003 + 7919 * (group + 1)) % (2**31 - 1)


def group_cluster_counts(sizes: np.ndarray, spread: np.ndarray, n_clusters: int) -> np.ndarray:
    """Clusters per group: one each, the other ``n_clusters - G`` in proportion to the group's spread (its
    sum of squared distances to the coarse centroid) by largest remainder
    (:func:`presel.selection.budget.allocate`), never more than a group's points.

    Spread, not size: measured on the benchmark pools (``benchmarks/select_bench.py --hier-sweep``), sharing
    clusters by size starves the loose groups (outliers, broad concepts) and lands 2-10% above flat k-means;
    by spread it lands within about 1%."""
    from presel.selection.budget import allocate

    sizes = np.asarray(sizes, dtype=np.int64)
    w = np.asarray(spread, dtype=np.float64)
    if not (w > 0).any():
        w = sizes.astype(np.float64)
    return 1 + allocate(n_clusters - len(sizes), w, sizes - 1)


def _fill_to(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Make exactly ``n_clusters`` non-empty clusters: while some are missing, the point farthest from its
    centroid among clusters of 2 or more becomes a cluster of its own (deterministic; rarely needed)."""
    labels = labels.copy()
    cents = [c for c in centroids]
    missing = n_clusters - len(cents)
    if missing <= 0:
        return labels, centroids
    d = _sq_dist(x, centroids, labels)
    counts = np.bincount(labels, minlength=len(cents))
    for j in np.argsort(-d, kind="stable"):
        if missing == 0:
            break
        if counts[labels[j]] < 2:
            continue
        counts[labels[j]] -= 1
        labels[j] = len(cents)
        cents.append(x[j].astype(np.float32))
        counts = np.append(counts, 1)
        missing -= 1
    cents_arr = np.stack(cents).astype(np.float32)
    for c in range(len(centroids)):  # the clusters that gave a point: their mean again
        cents_arr[c] = x[labels == c].mean(axis=0, dtype=np.float64)
    return labels, cents_arr


def default_groups(n_clusters: int) -> int:
    """Coarse groups for ``C`` clusters: ``round(sqrt(C) / 2)``, at least 2. Per-iteration cost ``n (G + C / G) d``
    is 1.25x its minimum (at ``G = sqrt(C)``) and the objective is markedly closer to flat's (fewer borders)."""
    return max(2, int(round(np.sqrt(n_clusters) / 2)))


def hierarchical_kmeans(x: np.ndarray, n_clusters: int, *, backend: str = "faiss", seed: int = 0,
                        niter: int | None = None, groups: int | None = None, refine: int = 2, workers: int = 1) -> KMeansResult:
    """Two-level k-means: a coarse k-means into ``G`` groups (:func:`default_groups`, about ``sqrt(C) / 2``), then
    k-means inside each group with the ``C`` clusters split over groups (:func:`group_cluster_counts`).

    Then ``refine`` Lloyd passes across group borders (:func:`_refine`: each point may join any cluster of its two
    nearest groups), which halves the gap to flat k-means where coarse borders cut through dense blobs.

    A group that holds more than twice its share of the clusters (coarse centroids spent on outliers leave the
    bulk of a task in one group) is split the same way again, so the cost bound holds on lopsided data.
    ``workers`` > 1 runs the groups' k-means side by side, one core each (:func:`map_threads`; same result).

    Cost per Lloyd iteration ``n (G + C / G) d``, about ``2.5 n sqrt(C) d``, instead of ``n C d``. Returns exactly
    ``C`` non-empty clusters (canonical numbering, as :func:`kmeans`); the
    objective is the sum of squared distances to those centroids. Deterministic for a seed (group ``g`` runs with
    a seed derived from ``seed`` and ``g``).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    if not 1 <= n_clusters <= n:
        raise PreselError(f"n_clusters={n_clusters} must be between 1 and n_samples={n}")
    g = int(groups) if groups else default_groups(n_clusters)
    if g <= 1 or g >= n_clusters:
        res = kmeans(x, n_clusters, backend=backend, seed=seed, niter=niter)
        return _filled(x, res, n_clusters)
    coarse = kmeans(x, g, backend=backend, seed=seed, niter=niter)
    sizes = np.bincount(coarse.labels, minlength=coarse.n_clusters)
    spread = np.bincount(coarse.labels, weights=_sq_dist(x, coarse.centroids, coarse.labels),
                         minlength=coarse.n_clusters)
    counts = group_cluster_counts(sizes, spread, n_clusters)
    order = np.argsort(coarse.labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    labels = np.empty(n, dtype=np.int64)
    results: list[KMeansResult | None] = [None] * coarse.n_clusters
    big = 2 * n_clusters / len(counts)  # a group holding more than twice its share of clusters splits again

    def fine(grp: int) -> None:
        xg = x[order[bounds[grp]:bounds[grp + 1]]]
        c_g, s_g = int(counts[grp]), _seed_for(seed, grp)
        if c_g > big and c_g >= 16:  # e.g. the bulk of a task when outliers took most coarse centroids
            results[grp] = hierarchical_kmeans(xg, c_g, backend=backend, seed=s_g, niter=niter, refine=refine)
        else:
            results[grp] = _filled(xg, kmeans(xg, c_g, backend=backend, seed=s_g, niter=niter), c_g)

    map_threads(fine, list(range(coarse.n_clusters)), workers, backend)
    cents: list[np.ndarray] = []
    objective = 0.0
    offset = 0
    for grp, res in enumerate(results):
        labels[order[bounds[grp]:bounds[grp + 1]]] = res.labels + offset
        cents.append(res.centroids)
        objective += res.objective
        offset += res.n_clusters
    centroids = np.concatenate(cents)
    if refine:
        labels, centroids, objective = _refine(x, coarse.centroids, labels, centroids,
                                               np.repeat(np.arange(coarse.n_clusters), counts), refine)
    labels, centroids = _canonical(labels, centroids)
    return KMeansResult(labels, centroids, objective)


def _refine(x: np.ndarray, coarse: np.ndarray, labels: np.ndarray, centroids: np.ndarray, group_of: np.ndarray,
            passes: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd passes across group borders: a point may move to any cluster of its two nearest groups (a blob
    cut by a coarse border is where two levels lose against one); means are updated between passes.
    Cost per pass about ``2 n (C / G) d``. A pass never empties a cluster (its members would stay)."""
    n_c = len(centroids)
    near = _nearest2(x, coarse)
    cand = [np.nonzero((near[:, 0] == g) | (near[:, 1] == g))[0] for g in range(len(coarse))]
    members = [np.nonzero(group_of == g)[0] for g in range(len(coarse))]
    best = None
    for p in range(passes):
        if p:
            centroids = _means(x, labels, n_c)
        best = np.full(len(x), np.inf)
        new = labels.copy()
        for pts, cl in zip(cand, members):
            if not len(pts):
                continue
            lab, dist = _assign(x[pts], centroids[cl])
            better = dist < best[pts]
            best[pts[better]] = dist[better]
            new[pts[better]] = cl[lab[better]]
        counts = np.bincount(new, minlength=n_c)
        if (counts == 0).any():
            keep = np.nonzero(counts[labels] == 0)[0]
            new[keep] = labels[keep]
            best[keep] = _sq_dist(x[keep], centroids, labels[keep])
        labels = new
    return labels, centroids, float(best.sum())


def _means(x: np.ndarray, labels: np.ndarray, n_c: int) -> np.ndarray:
    """Mean of the rows of each cluster (a sparse one-hot product: no copy of ``x``)."""
    import scipy.sparse as sp

    n = len(labels)
    onehot = sp.csr_matrix((np.ones(n, dtype=np.float32), (labels, np.arange(n))), shape=(n_c, n))
    sums = np.asarray(onehot @ x, dtype=np.float64)
    return (sums / np.bincount(labels, minlength=n_c)[:, None]).astype(np.float32)


def _nearest2(x: np.ndarray, centroids: np.ndarray, block: int = 8192) -> np.ndarray:
    """Indices of the two nearest centroids of each row (the same one twice when there is only one)."""
    c2 = np.einsum("ij,ij->i", centroids, centroids)
    out = np.empty((len(x), 2), dtype=np.int64)
    for s in range(0, len(x), block):
        d = c2[None, :] - 2.0 * (x[s:s + block] @ centroids.T)
        first = np.argmin(d, axis=1)
        d[np.arange(len(d)), first] = np.inf
        out[s:s + block, 0] = first
        out[s:s + block, 1] = np.argmin(d, axis=1) if d.shape[1] > 1 else first
    return out


def _sq_dist(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray, block: int = 16384) -> np.ndarray:
    """Squared distance of each row to its assigned centroid (blocked: no n x d temporary)."""
    out = np.empty(len(x), dtype=np.float64)
    for s in range(0, len(x), block):
        diff = x[s:s + block] - centroids[labels[s:s + block]]
        out[s:s + block] = np.einsum("ij,ij->i", diff, diff, dtype=np.float64)
    return out


def _filled(x: np.ndarray, res: KMeansResult, n_clusters: int) -> KMeansResult:
    """``res`` with exactly ``n_clusters`` non-empty clusters (:func:`_fill_to`), objective recomputed if changed."""
    if res.n_clusters == n_clusters:
        return res
    labels, cents = _fill_to(x, res.labels, res.centroids, n_clusters)
    labels, cents = _canonical(labels, cents)
    return KMeansResult(labels, cents, float(_sq_dist(x, cents, labels).sum()))


def use_hierarchical(mode: str, n: int) -> bool:
    """Whether ``mode`` (flat | hierarchical | auto) runs hierarchical k-means for a task of ``n`` points."""
    if mode not in MODES:
        raise PreselError(f"kmeans={mode!r} must be one of {', '.join(MODES)}")
    return mode == "hierarchical" or (mode == "auto" and n >= AUTO_HIERARCHICAL_MIN)


def cluster(x: np.ndarray, n_clusters: int, *, mode: str = "flat", backend: str = "faiss", seed: int = 0,
            niter: int | None = None, workers: int = 1) -> KMeansResult:
    """k-means of one task: flat (:func:`kmeans`) or two-level (:func:`hierarchical_kmeans`) as ``mode`` says."""
    if use_hierarchical(mode, x.shape[0]):
        return hierarchical_kmeans(x, n_clusters, backend=backend, seed=seed, niter=niter, workers=workers)
    return kmeans(x, n_clusters, backend=backend, seed=seed, niter=niter)


def map_threads(fn, items: list, workers: int, backend: str = "faiss") -> None:
    """``fn(item)`` for each item: in order when ``workers <= 1``, else on ``workers`` threads with one BLAS /
    OpenMP thread each (faiss and numpy release the GIL; the results are those of the serial run). The first
    failure in item order is raised."""
    if workers <= 1 or len(items) < 2 or resolve_backend(backend) == "faiss-gpu":  # one GPU: one at a time
        for it in items:
            fn(it)
        return
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    init = None
    if backend.startswith("faiss"):
        faiss = _import_faiss()

        def init() -> None:  # OpenMP's thread count is per calling thread
            faiss.omp_set_num_threads(1)
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(min(workers, len(items)), initializer=init) as ex:
        futures = [ex.submit(fn, it) for it in items]
        for f in futures:
            f.result()
