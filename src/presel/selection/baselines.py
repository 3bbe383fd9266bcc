"""Baselines on the selection engine's interface (``--method``): what differs from PreSel.

The engine (:mod:`presel.selection.select`) needs, per task, cluster labels for all items and
an order inside each cluster; quotas, cross-task exclusion and the exact budget are shared.

- ``random``: one group per task (no clustering), uniform order: a uniform sample of the task
  quota (seeded).
- ``random-cluster`` (the official "random"): PreSel's k-means clusters and per-cluster quotas,
  uniform order inside each cluster (seeded).
- ``typiclust`` (Hacohen et al., ICML 2022, adapted per task): k-means with ``C = task quota``
  clusters fit on the task's available (non-reference) items; reference items get their nearest
  centroid. Every cluster gets an equal share (one image per cluster while the quota allows, as
  TypiClust picks one per cluster), the most typical first, typicality =
  ``1 / (mean Euclidean distance to the min(20, m // 2) nearest items of the cluster + 1e-5)``.
  (TypiClust's code feeds faiss *squared* L2 distances into that mean; we use Euclidean
  distances, as its paper writes.)
"""

from __future__ import annotations

import zlib

import numpy as np


def random_order(n: int, seed: int, task: str) -> np.ndarray:
    """A seeded uniform permutation rank per item (lower = earlier), independent per task."""
    return np.random.default_rng([seed, zlib.crc32(task.encode("utf-8"))]).permutation(n)


def typiclust_clusters(x: np.ndarray, avail: np.ndarray, quota: int, *, backend: str, seed: int,
                       niter: int | None) -> tuple[np.ndarray, float | None]:
    """TypiClust clusters of one task: labels for all items (numbered by first member) and the objective."""
    from presel.selection.kmeans import _assign, kmeans

    n = len(x)
    av = np.nonzero(avail)[0]
    n_c = min(int(quota), len(av))
    if n_c <= 1:
        return np.zeros(n, dtype=np.int64), None
    km = kmeans(x[av], n_c, backend=backend, seed=seed, niter=niter)
    labels, _ = _assign(x, km.centroids)
    labels[av] = km.labels
    uniq, first = np.unique(labels, return_index=True)
    remap = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    remap[uniq[np.argsort(first, kind="stable")]] = np.arange(len(uniq))
    return remap[labels], km.objective
