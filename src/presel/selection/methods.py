"""Within-cluster orders beyond the paper, and the k-center greedy (coreset) baseline.

PreSel ranks a cluster's images by neighbour centrality alone, so near-copies of one central image
rank first together and a cluster's quota can go to a row of near-identical images. The method
here keeps PreSel's task weights, clusters and per-cluster quotas (the engine in
:mod:`presel.selection.select` is unchanged) and only changes the order inside a cluster:

- ``presel-cover`` (facility location): greedily pick the image that most increases
  ``sum_j max(0, max_{p in picked} cos(x_j, x_p))`` over the cluster's images ``j``; reference
  images in the cluster count as already picked. The first pick is the image with the largest
  summed similarity to its cluster (the most representative); each later pick is the image that
  best represents what the picks so far cover worst, so a near-copy of a pick gains almost nothing.
  This is the classic greedy for the monotone submodular facility-location objective.

Two other orders were measured on the within-task benchmark (``benchmarks/quality.py``, MNIST,
5 seeds) and dropped: greedy maximal marginal relevance (``centrality - 0.5 * max cos to picks``)
gained over PreSel but stayed below random at 5-15%; centrality order with near-duplicates
(cos > 0.9 to a pick) pushed to the end was no better than PreSel. Facility location with a
sharper similarity (``exp((cos - 1) / 0.1)`` or ``cos^4``) scored the same as plain cosine.

The greedy is exact for the first ``GREEDY_STEPS`` picks of a cluster (``O(m^2)`` memory and
``O(m^2)`` time per pick for a cluster of ``m`` images); any picks beyond follow centrality. With
``images_per_cluster=100`` clusters hold about 100 images, so the whole cluster is ordered.

``kcenter_greedy`` is the coreset baseline of Sener & Savarese (ICLR 2018): a seeded first point,
then repeatedly the point farthest (Euclidean) from everything picked.
"""

from __future__ import annotations

import numpy as np

WITHIN_CLUSTER_METHODS = ("presel-cover",)
GREEDY_STEPS = 512


def _facility_order(s: np.ndarray, cur: np.ndarray, steps: int) -> list[int]:
    m = s.shape[0]
    picked = np.zeros(m, dtype=bool)
    order: list[int] = []
    for _ in range(min(steps, m)):
        gain = np.maximum(s - cur[None, :], 0.0).sum(axis=1)
        gain[picked] = -np.inf
        i = int(np.argmax(gain))  # ties: the lowest index (deterministic)
        order.append(i)
        picked[i] = True
        cur = np.maximum(cur, s[i])
    return order


def cluster_order(method: str, x: np.ndarray, ref: np.ndarray, centrality: np.ndarray) -> np.ndarray:
    """Order (indices into the available rows) of one cluster's available images, best first.

    ``x``: L2-normalised features of the cluster's available images; ``ref``: those of its
    reference images (may be empty); ``centrality``: neighbour centrality of the available images.
    """
    m = len(x)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    x = np.ascontiguousarray(x, dtype=np.float32)
    s = np.maximum(x @ x.T, 0.0).astype(np.float64)
    cur = np.zeros(m)
    if len(ref):
        cur = np.maximum((np.asarray(ref, dtype=np.float32) @ x.T).max(axis=0), 0.0).astype(np.float64)
    if method != "presel-cover":
        raise ValueError(f"unknown within-cluster method {method!r}")
    order = _facility_order(s, cur, GREEDY_STEPS)
    if len(order) < m:  # beyond GREEDY_STEPS: centrality order
        done = np.zeros(m, dtype=bool)
        done[order] = True
        rest = np.nonzero(~done)[0]
        order = list(order) + rest[np.lexsort((rest, -centrality[rest]))].tolist()
    return np.asarray(order, dtype=np.int64)


def within_cluster_ranks(method: str, x: np.ndarray, labels: np.ndarray, avail: np.ndarray,
                         k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per item: neighbour centrality (nan for reference items) and the position in its cluster's order.

    ``x``: L2-normalised features of all items of a task; ``labels``: their clusters; ``avail``:
    False for reference items. Positions of unavailable items are 0 (they are never picked).
    """
    from threadpoolctl import threadpool_limits

    from presel.selection.centrality import neighbour_centrality

    n = len(labels)
    score = np.full(n, np.nan)
    pos = np.zeros(n, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    with threadpool_limits(1, user_api="blas"):
        for mem in np.split(order, bounds):
            av = mem[avail[mem]]
            if not len(av):
                continue
            rf = mem[~avail[mem]]
            c = neighbour_centrality(x[av], k)
            score[av] = c
            o = cluster_order(method, x[av], x[rf], c)
            pos[av[o]] = np.arange(1, len(av) + 1)
    return score, pos


def kcenter_greedy(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` rows of ``x`` by k-center greedy (seeded first point), in pick order."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    m = len(x)
    n = min(int(n), m)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    sq = np.einsum("ij,ij->i", x, x)
    first = int(np.random.default_rng(seed).integers(m))
    picks = [first]
    dist = np.maximum(sq + sq[first] - 2.0 * (x @ x[first]), 0.0)
    dist[first] = -1.0
    for _ in range(n - 1):
        i = int(np.argmax(dist))
        picks.append(i)
        dist = np.minimum(dist, np.maximum(sq + sq[i] - 2.0 * (x @ x[i]), 0.0))
        dist[picks] = -1.0
    return np.asarray(picks, dtype=np.int64)
