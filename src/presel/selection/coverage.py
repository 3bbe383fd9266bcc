"""Coverage rules over a task's kNN graph: kernel herding (MaxHerding) and ProbCover ball coverage.

Both maximise a facility-location coverage ``F(S) = sum_j max_{p in S u R} K(x_j, x_p)`` over the
task's images ``j`` (``R``: the task's reference images, counted as already picked) by the lazy
greedy (exact greedy order for a monotone submodular ``F``; ties: the lowest item index). They
differ in the kernel ``K``:

- ``herding`` (MaxHerding, Bae et al. 2024): Gaussian ``K = exp(-d^2 / (2 sigma^2))`` on
  L2-normalised features, ``sigma`` = the median over the task of the distance to the
  ``SIGMA_K``-th nearest neighbour (a bandwidth from local neighbour distances, not plain cosine);
- ``probcover`` (Yehuda et al. 2022): a ball, ``K = 1`` where ``d < delta``, ``delta`` from the
  same neighbour distances (``DELTA_K``-th neighbour, median); once every image is covered the
  gains are all zero and the order continues by index.

Whole task vs clusters: the plain rules cover the whole task (no cluster quotas; clusters play no
role), the ``-cluster`` rules cover inside PreSel's k-means clusters with PreSel's
size-proportional cluster quotas (the kernel restricted to pairs in the same cluster).

Scale: the kernel lives on a kNN graph (``KNN`` neighbours per image, from faiss: exact search up
to ``EXACT_MAX`` images, an IVF index above), so memory is ``O(n * KNN)``, never ``n x n``; the
greedy touches one graph row per gain evaluation.
"""

from __future__ import annotations

import heapq

import numpy as np

COVERAGE_METHODS = ("herding", "herding-cluster", "probcover")
KNN = 100  # neighbours per image in the kernel graph
SIGMA_K = 10  # bandwidth: median distance to the SIGMA_K-th neighbour
DELTA_K = 10  # ProbCover radius: median distance to the DELTA_K-th neighbour
EXACT_MAX = 20_000  # exact kNN search up to this many images; IVF above


_LAST: dict[str, tuple] = {}  # the last graph built: repeated selections on one task reuse it


def knn(x: np.ndarray, k: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` nearest other rows of L2-normalised ``x``: indices (n, k) and squared distances (n, k).

    Ties: faiss's order. Self is removed (exact duplicates of a row may stay as neighbours). The
    last result is kept (keyed by a digest of ``x``, ``k`` and ``seed``) and returned as copies."""
    import hashlib

    x = np.ascontiguousarray(x, dtype=np.float32)
    key = hashlib.blake2b(x.tobytes(), digest_size=16, key=f"{k}:{seed}:{x.shape}".encode()).hexdigest()
    hit = _LAST.get(key)
    if hit is None:
        hit = _knn(x, k, seed)
        _LAST.clear()
        _LAST[key] = hit
    return hit[0].copy(), hit[1].copy()


def _knn(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from presel.selection.kmeans import _import_faiss

    faiss = _import_faiss()
    n, d = x.shape
    k = min(int(k), n - 1)
    if k <= 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32)
    if n <= EXACT_MAX:
        index = faiss.IndexFlatL2(d)
    else:
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        rng = np.random.default_rng(seed)
        sample = x[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))]
        index.cp.seed = int(seed) % (2**31 - 1)
        index.train(sample)
        index.nprobe = 16
    index.add(x)
    dist, idx = index.search(x, k + 1)
    out_i = np.empty((n, k), np.int64)
    out_d = np.empty((n, k), np.float32)
    for r in range(n):  # drop self (usually column 0), keep k
        keep = idx[r] != r
        ii, dd = idx[r][keep][:k], dist[r][keep][:k]
        keep = ii >= 0  # IVF may return fewer (-1): pad with self at distance 0 (K_ii = 1 anyway)
        ii = np.concatenate([ii[keep], np.full(k - int(keep.sum()), r)])
        dd = np.concatenate([dd[keep], np.zeros(k - int(keep.sum()), np.float32)])
        out_i[r], out_d[r] = ii, dd
    return out_i, np.maximum(out_d, 0.0)


def scale_k(method: str, n: int, steps: int) -> int:
    """Which neighbour's distance sets the bandwidth (or ball radius)."""
    import os

    mode = os.environ.get("PRESEL_COVER_K", "")
    if mode == "budget":
        return int(np.clip(round(n / max(1, steps)), 3, KNN))
    if mode:
        return int(mode)
    return SIGMA_K if method != "probcover" else DELTA_K


def kernel_graph(method: str, nbr: np.ndarray, d2: np.ndarray, kth: int) -> np.ndarray:
    """Kernel values (n, k) on the kNN graph edges for ``herding*`` (Gaussian) or ``probcover`` (ball)."""
    if d2.shape[1] == 0:
        return np.zeros_like(d2, dtype=np.float64)
    col = min(kth, d2.shape[1]) - 1
    scale = float(np.median(d2[:, col]))
    if method == "probcover":
        return (d2 < scale).astype(np.float64) if scale > 0 else (d2 <= 0).astype(np.float64)
    if scale <= 0:
        scale = float(d2[d2 > 0].min()) if (d2 > 0).any() else 1.0
    return np.exp(-d2.astype(np.float64) / (2.0 * scale))  # scale = sigma^2


def kernel_matrix(nbr: np.ndarray, kern: np.ndarray):
    """Symmetric sparse kernel (CSR, float64) from kNN edges: ``K_ij = max(kern(i->j), kern(j->i))``, ``K_ii = 1``."""
    from scipy import sparse

    n = len(nbr)
    rows = np.repeat(np.arange(n), nbr.shape[1])
    a = sparse.csr_matrix((kern.ravel(), (rows, nbr.ravel())), shape=(n, n))
    a = a.maximum(a.T).tolil()
    a.setdiag(1.0)
    a = a.tocsr()
    a.eliminate_zeros()
    a.sort_indices()
    return a


def greedy_cover(a, cand: np.ndarray, cur: np.ndarray, steps: int) -> np.ndarray:
    """Lazy-greedy facility location on a sparse kernel ``a`` (CSR); returns an order of all candidates.

    Picking ``i`` covers row ``i`` of ``a``; ``cur``: coverage so far (1 for reference images). The
    first ``steps`` picks are the exact (lazy) greedy, ties to the lowest index; the remaining
    candidates follow by their last computed gain, then index.
    """
    cur = np.array(cur, dtype=np.float64)
    ptr, ind, val = a.indptr, a.indices, a.data

    def gain(i: int) -> float:
        s, e = ptr[i], ptr[i + 1]
        return float(np.maximum(val[s:e] - cur[ind[s:e]], 0.0).sum())

    cands = np.nonzero(cand)[0]
    heap = [(-gain(int(i)), int(i)) for i in cands]
    heapq.heapify(heap)
    order: list[int] = []
    while heap and len(order) < steps:
        _, i = heapq.heappop(heap)
        g = gain(i)
        if heap and (-g, i) > heap[0]:  # stale: a better bound waits
            heapq.heappush(heap, (-g, i))
            continue
        order.append(i)
        s, e = ptr[i], ptr[i + 1]
        cur[ind[s:e]] = np.maximum(cur[ind[s:e]], val[s:e])
    rest = sorted(heap)
    return np.asarray(order + [i for _, i in rest], dtype=np.int64)


def coverage_positions(method: str, x: np.ndarray, avail: np.ndarray, steps: int, *, labels: np.ndarray | None = None,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per item of a task: its coverage gain given the reference set (nan for reference items) and
    its 1-based pick position (0 for reference items, never picked).

    ``x``: L2-normalised features of all items (reference included); ``avail``: False for
    reference items; ``labels``: clusters to restrict the kernel to (``-cluster`` rules; then every
    available item is ordered greedily, so each cluster's quota takes its own greedy prefix).
    """
    n = len(x)
    score = np.full(n, np.nan)
    pos = np.zeros(n, dtype=np.int64)
    if not avail.any():
        return score, pos
    nbr, d2 = knn(x, KNN, seed=seed)
    kern = kernel_graph(method, nbr, d2, scale_k(method, n, steps))
    if labels is not None:
        kern = np.where(labels[nbr] == labels[:, None], kern, 0.0)
        steps = n
    a = kernel_matrix(nbr, kern)
    cur = np.zeros(n)
    for r in np.nonzero(~avail)[0]:  # reference images count as picked
        s, e = a.indptr[r], a.indptr[r + 1]
        cur[a.indices[s:e]] = np.maximum(cur[a.indices[s:e]], a.data[s:e])
    order = greedy_cover(a, avail, cur, steps)
    pos[order] = np.arange(1, len(order) + 1)
    gains = np.maximum(a.data - cur[a.indices], 0.0)
    row_gain = np.add.reduceat(gains, a.indptr[:-1]) if len(gains) else np.zeros(n)
    score[avail] = row_gain[avail]
    return score, pos
