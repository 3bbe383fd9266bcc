"""Exact-budget allocation: largest-remainder rounding with capacity caps and redistribution.

One function, :func:`allocate`, splits a budget over tasks (weights = task weights, capacity =
available images) and a task quota over clusters (weights = available cluster sizes, capacity =
images still available in the cluster). The result always sums to ``total`` exactly.
"""

from __future__ import annotations

import numpy as np

from presel.errors import PreselError


def _largest_remainder(total: int, quota: np.ndarray, weights: np.ndarray, idx: np.ndarray,
                       cap: np.ndarray) -> np.ndarray:
    """Round real ``quota`` (summing to ``total``) to integers summing to ``total``, never above ``cap``.

    Remainder ties: larger remainder, then larger weight, then lower index.
    """
    base = np.minimum(np.floor(quota + 1e-9).astype(np.int64), cap)
    short = total - int(base.sum())
    rem = np.where(base < cap, quota - base, -np.inf)  # a full bin never takes a remainder seat
    order = np.lexsort((idx, -weights, -rem))  # last key is primary
    while short > 0:  # normally one pass; more only if float drift left seats over
        for j in order:
            if short == 0:
                break
            if base[j] < cap[j]:
                base[j] += 1
                short -= 1
    return base


def allocate(total: int, weights: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Split ``total`` items over bins in proportion to ``weights``, capped at ``capacity``.

    Water-filling then one rounding:

    1. real shares ``q_j = rest * w_j / sum(w)`` over the bins not yet capped (``rest`` = total
       minus the capacity of the capped bins);
    2. every bin whose share exceeds its capacity is capped (gets exactly its capacity) and its
       surplus goes to the others in proportion to weight: repeat 1-2 until no share exceeds;
    3. if the weights of the uncapped bins are all 0, their shares are proportional to capacity;
    4. largest-remainder rounding of the shares; remainder ties: larger remainder, then larger
       weight, then lower index.

    Returns int64 counts with ``sum == total`` and ``0 <= counts <= capacity``; raises
    :class:`PreselError` if ``total > capacity.sum()``.
    """
    w = np.asarray(weights, dtype=np.float64).ravel()
    cap = np.asarray(capacity, dtype=np.int64).ravel()
    if w.shape != cap.shape:
        raise ValueError(f"weights ({w.shape}) and capacity ({cap.shape}) differ in shape")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise PreselError("allocation weights must be finite and >= 0")
    if (cap < 0).any():
        raise ValueError("capacity must be >= 0")
    total = int(total)
    if total < 0:
        raise PreselError(f"budget {total} must be >= 0")
    if total > int(cap.sum()):
        raise PreselError(f"cannot place {total} items: only {int(cap.sum())} available")
    out = np.zeros(len(w), dtype=np.int64)
    if total == 0:
        return out
    capped = cap == 0
    while True:
        free = np.nonzero(~capped)[0]
        rest = total - int(cap[capped].sum())
        wf = w[free]
        if wf.sum() <= 0:
            wf = cap[free].astype(np.float64)
        q = rest * (wf / wf.sum())
        over = q > cap[free] + 1e-9
        if not over.any():
            break
        capped[free[over]] = True
    out[capped] = cap[capped]
    out[free] = _largest_remainder(rest, q, w[free], free, cap[free])
    return out
