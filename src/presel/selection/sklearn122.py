"""k-means as scikit-learn 1.2.2 runs ``KMeans(n_clusters, random_state=12345)``, on any scikit-learn >= 1.3.

The authors of PreSel clustered in LLaVA's environment, which pins ``scikit-learn==1.2.2``. Newer releases
draw the first k-means++ centre differently (1.3, PR #25752: a weighted ``choice`` instead of ``randint``)
and default to one initialisation (1.4, ``n_init="auto"``), so the same call gives other clusters. This
module re-implements the 1.2.2 seeding from a reading of its ``sklearn/cluster/_kmeans.py`` (not copied)
and runs each Lloyd descent with the installed scikit-learn, whose Lloyd loop, tolerance and inertia are
unchanged since 1.2:

- ``random_state`` -> one ``numpy.random.RandomState`` shared by the ten initialisations in turn (1.2.2
  draws no per-init seeds: each init continues the same stream);
- the data are centred on their mean (in their own dtype) before seeding, as ``KMeans.fit`` does;
- k-means++: first centre ``randint(n)``; then per centre ``2 + int(log(k))`` candidates drawn by
  ``uniform(size) * potential`` searched in the float64 cumulative sum of the squared distances; the
  candidate that lowers the potential most wins (first on ties);
- squared distances as 1.2.2's ``euclidean_distances``: float32 data are upcast to float64 in the same
  chunks, ``-2 x.y + |x|^2 + |y|^2`` then cast back, clipped at 0; the potentials summed as numpy 1.x sums
  (:func:`sum_rows_numpy1`: numpy 2 sums float32 in another order, which flips near ties between candidates);
- each init runs ``KMeans(init=<its centres>, n_init=1, algorithm="lloyd", tol=1e-4, max_iter=300)`` of
  the installed scikit-learn (it centres the data and the centres the same way, and scales ``tol`` by
  the mean feature variance as 1.2.2 does);
- a later init replaces the best only with a strictly lower inertia and a different partition.

``scripts/check-official.sh`` compares the labels with a real scikit-learn 1.2.2 in a throwaway venv.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

RANDOM_STATE = 12345
N_INIT = 10
MAX_ITER = 300
TOL = 1e-4


def row_norms_squared(x: np.ndarray) -> np.ndarray:
    """``sum(x * x, axis=1)`` computed as scikit-learn's ``row_norms`` does (one einsum, in ``x``'s dtype)."""
    return np.einsum("ij,ij->i", x, x)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm as ``sklearn.preprocessing.normalize(x, norm="l2")``: norms in ``x``'s dtype.

    Zero rows stay zero (their norm counts as 1), as in scikit-learn.
    """
    x = np.array(x, dtype=x.dtype if x.dtype in (np.float32, np.float64) else np.float64, order="C", copy=True)
    norms = np.sqrt(row_norms_squared(x))
    norms[norms == 0.0] = 1.0
    x /= norms[:, np.newaxis]
    return x


_BUFSIZE = 8192  # numpy's reduction buffer: a row is summed in chunks of this many elements
_PW_BLOCK = 128  # numpy's pairwise-summation block


@functools.lru_cache(maxsize=256)
def _pairwise_plan(n: int) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int, int], ...], int]:
    """numpy 1.x's pairwise summation tree over ``n`` (>= 8) elements: the leaves ``(start, length)``, then the
    additions ``(out, left, right)`` over the node numbers (leaves first), and the root's number."""
    leaves: list[tuple[int, int]] = []
    adds: list[tuple[int, int, int, int]] = []  # (height, out, left, right), numbered after the leaves below

    def walk(start: int, m: int) -> tuple[int, int]:  # (node, height)
        if m <= _PW_BLOCK:
            leaves.append((start, m))
            return -len(leaves), 0  # provisional leaf ids (negative)
        m2 = m // 2
        m2 -= m2 % 8
        left, hl = walk(start, m2)
        right, hr = walk(start + m2, m - m2)
        adds.append((max(hl, hr) + 1, len(adds), left, right))
        return len(adds) - 1, max(hl, hr) + 1

    root, _ = walk(0, n)
    nl = len(leaves)

    def node(i: int) -> int:
        return -i - 1 if i < 0 else nl + i

    ordered = tuple((node(o), node(left), node(right)) for _, o, left, right in sorted(adds))
    return tuple(leaves), ordered, node(root)


def _pairwise_rows(a: np.ndarray) -> np.ndarray:
    """Per row, numpy 1.x's ``pairwise_sum`` of ``a`` (2-D, ``len >= 8`` per row) in ``a``'s dtype."""
    leaves, adds, root = _pairwise_plan(a.shape[1])
    t = a.dtype.type
    vals = np.empty((a.shape[0], len(leaves) + len(adds)), dtype=a.dtype)
    by_len: dict[int, list[int]] = {}
    for i, (_, m) in enumerate(leaves):
        by_len.setdefault(m, []).append(i)
    for m, ids in by_len.items():
        starts = np.array([leaves[i][0] for i in ids])
        block = a[:, starts[:, None] + np.arange(m)]  # rows x leaves x m
        q = m // 8
        r = np.add.accumulate(block[:, :, :q * 8].reshape(a.shape[0], len(ids), q, 8), axis=2)[:, :, -1, :]
        res = ((r[..., 0] + r[..., 1]) + (r[..., 2] + r[..., 3])) + ((r[..., 4] + r[..., 5]) + (r[..., 6] + r[..., 7]))
        for j in range(q * 8, m):
            res = res + block[:, :, j]
        vals[:, ids] = res.astype(t, copy=False)
    for o, left, right in adds:
        vals[:, o] = vals[:, left] + vals[:, right]
    return vals[:, root]


def sum_rows_numpy1(a: np.ndarray) -> np.ndarray:
    """``a.sum(axis=1)`` bit for bit as numpy 1.x computes it (scikit-learn 1.2.2's environment): per row, chunks of
    8192 elements, each by pairwise summation (8 running sums per block of <= 128, blocks halved down to it),
    added in turn. numpy 2 sums float32 in another order, which can move a k-means++ near tie."""
    a = np.ascontiguousarray(a)
    rows, n = a.shape
    out = np.zeros(rows, dtype=a.dtype)
    for st in range(0, n, _BUFSIZE):
        chunk = a[:, st:st + _BUFSIZE]
        if chunk.shape[1] < 8:
            part = np.zeros(rows, dtype=a.dtype)
            for j in range(chunk.shape[1]):
                part = part + chunk[:, j]
        else:
            part = _pairwise_rows(chunk)
        out = out + part
    return out


def _batch_size(n_a: int, n_b: int, d: int) -> int:
    """Chunk length of 1.2.2's float32 distance computation (10% more memory than the inputs, at least 10 MiB)."""
    maxmem = max(((n_a + n_b) * d + n_a * n_b) / 10, 10 * 2**17)
    tmp = 2 * d
    return max(int((-tmp + np.sqrt(tmp**2 + 4 * maxmem)) / 2), 1)


def squared_distances(a: np.ndarray, x: np.ndarray, x_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances from the rows of ``a`` to the rows of ``x`` as 1.2.2's ``_euclidean_distances``.

    ``x_sq`` are the squared norms of ``x`` in ``x``'s dtype (used only for float64 data, as there).
    """
    if a.dtype == np.float32 or x.dtype == np.float32:
        out = np.empty((a.shape[0], x.shape[0]), dtype=np.float32)
        bs = _batch_size(a.shape[0], x.shape[0], a.shape[1])
        for i in range(0, a.shape[0], bs):
            ac = a[i:i + bs].astype(np.float64)
            aa = row_norms_squared(ac)[:, np.newaxis]
            for j in range(0, x.shape[0], bs):
                xc = x[j:j + bs].astype(np.float64)
                xx = row_norms_squared(xc)[np.newaxis, :]
                d = -2 * (ac @ xc.T)
                d += aa
                d += xx
                out[i:i + bs, j:j + bs] = d.astype(np.float32, copy=False)
    else:
        out = -2 * (a @ x.T)
        out += row_norms_squared(a)[:, np.newaxis]
        out += x_sq.reshape(1, -1)
    np.maximum(out, 0, out=out)
    return out


def kmeans_plusplus_indices(x: np.ndarray, n_clusters: int, rs: np.random.RandomState,
                            x_sq: np.ndarray | None = None) -> np.ndarray:
    """Rows of ``x`` chosen as initial centres by 1.2.2's ``_kmeans_plusplus`` (``x`` already centred)."""
    n = x.shape[0]
    if x_sq is None:
        x_sq = row_norms_squared(x)
    trials = 2 + int(np.log(n_clusters))
    idx = np.full(n_clusters, -1, dtype=np.int64)
    idx[0] = rs.randint(n)
    closest = squared_distances(x[idx[0]][np.newaxis, :], x, x_sq)
    pot = sum_rows_numpy1(closest)[0]
    for c in range(1, n_clusters):
        r = rs.uniform(size=trials) * pot
        cand = np.searchsorted(np.cumsum(closest, dtype=np.float64), r)
        np.clip(cand, None, closest.size - 1, out=cand)
        dist = squared_distances(x[cand], x, x_sq)
        np.minimum(closest, dist, out=dist)
        pots = sum_rows_numpy1(dist)
        best = int(np.argmin(pots))
        pot = pots[best]
        closest = dist[best]
        idx[c] = cand[best]
    return idx


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when every label of ``a`` maps onto a single label of ``b`` (1.2.2's ``_is_same_clustering``)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    pairs = np.unique(a * (int(b.max(initial=0)) + 1) + b)
    return len(pairs) == len(np.unique(a))


def kmeans_122(x: np.ndarray, n_clusters: int, *, random_state: int = RANDOM_STATE, n_init: int = N_INIT,
               max_iter: int = MAX_ITER, tol: float = TOL) -> tuple[np.ndarray, float, np.ndarray]:
    """Labels, inertia and centres of scikit-learn 1.2.2's ``KMeans(n_clusters, random_state=...).fit(x)``."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    x = np.ascontiguousarray(x)
    n = x.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters={n_clusters} must be between 1 and the {n} samples")
    rs = np.random.RandomState(random_state)
    xc = x - x.mean(axis=0)
    x_sq = row_norms_squared(xc)
    best: tuple[np.ndarray, float, np.ndarray] | None = None
    for _ in range(n_init):
        idx = kmeans_plusplus_indices(xc, n_clusters, rs, x_sq)
        km = KMeans(n_clusters=n_clusters, init=x[idx], n_init=1, algorithm="lloyd", tol=tol, max_iter=max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            km.fit(x)
        labels, inertia = km.labels_, float(km.inertia_)
        if best is None or (inertia < best[1] and not same_partition(labels, best[0])):
            best = (labels, inertia, km.cluster_centers_)
    assert best is not None
    return best[0].astype(np.int64), best[1], best[2]
