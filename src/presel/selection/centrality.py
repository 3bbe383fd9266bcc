"""Scores that rank images inside a cluster.

- :func:`neighbour_centrality` (PreSel): mean cosine similarity to the ``k`` nearest other
  images of the set (self excluded); ``k`` shrinks to ``size - 1``; a singleton scores 0.
- :func:`typicality` (TypiClust): ``1 / (mean Euclidean distance to the k nearest others + 1e-5)``.

Both are exact (brute force). Memory stays bounded for big clusters: the similarity matrix is
built in row blocks of at most ``block_bytes``.
"""

from __future__ import annotations

import numpy as np

BLOCK_BYTES = 64 << 20


def _topk_mean(x: np.ndarray, k: int, *, largest: bool, transform, block_bytes: int) -> np.ndarray:
    """Mean of the ``k`` best values per row of ``transform(x @ x.T)`` with the diagonal excluded."""
    m = x.shape[0]
    out = np.empty(m, dtype=np.float64)
    rows = max(1, block_bytes // max(1, 4 * m))
    for s in range(0, m, rows):
        e = min(m, s + rows)
        sim = x[s:e] @ x.T  # (b, m) float32
        vals = transform(sim, s, e)
        diag = np.arange(e - s)
        vals[diag, diag + s] = -np.inf if largest else np.inf
        # k <= m - 1, so the excluded diagonal (+-inf) never enters the k best
        if largest:
            part = -np.partition(-vals, k - 1, axis=1)[:, :k]
        else:
            part = np.partition(vals, k - 1, axis=1)[:, :k]
        # sort for an order-independent sum
        out[s:e] = np.sort(part.astype(np.float64), axis=1).mean(axis=1)
    return out


def neighbour_centrality(x: np.ndarray, k: int = 5, *, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """PreSel's neighbour centrality of each row of L2-normalised ``x`` (float32, m x d)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    m = x.shape[0]
    if m <= 1:
        return np.zeros(m, dtype=np.float64)
    kk = min(int(k), m - 1)
    return _topk_mean(x, kk, largest=True, transform=lambda sim, s, e: sim, block_bytes=block_bytes)


def typicality(x: np.ndarray, k: int = 20, *, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """TypiClust typicality: ``1 / (mean Euclidean distance to the k nearest others + 1e-5)``.

    ``k`` is ``min(k, m // 2)`` (at least 1) as in TypiClust's code for small clusters; a
    singleton scores 0.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    m = x.shape[0]
    if m <= 1:
        return np.zeros(m, dtype=np.float64)
    kk = max(1, min(int(k), m // 2, m - 1))
    sq = np.einsum("ij,ij->i", x, x)

    def dist(sim: np.ndarray, s: int, e: int) -> np.ndarray:
        return np.sqrt(np.maximum(sq[s:e, None] + sq[None, :] - 2.0 * sim, 0.0))

    mean = _topk_mean(x, kk, largest=False, transform=dist, block_bytes=block_bytes)
    return 1.0 / (mean + 1e-5)
