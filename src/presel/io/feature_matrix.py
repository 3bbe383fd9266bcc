"""``FeatureMatrix``: row-addressable features in memory-mapped parts (a leaf module: the readers in
:mod:`presel.io.features` and the feature store both build it, it imports neither)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from presel.errors import PreselError


class FeatureMatrix:
    """Row-addressable features in one or more parts, each ``(ids, array)`` with ``array`` N_i x d.

    ``ids`` are record ids or image keys (normalised relative paths); selection looks a record
    up by its id first, then by its image key.
    """

    def __init__(self, parts: Sequence[tuple[Sequence[str], np.ndarray]], source: str = "features"):
        if not parts:
            raise PreselError(f"{source}: no features found")
        self.source = source
        dims = {a.shape[1] if a.ndim == 2 else -1 for _, a in parts}
        if len(dims) != 1 or -1 in dims:
            raise PreselError(f"{source}: feature parts have different or invalid shapes {sorted(dims)}; "
                              "each part must be an N x d matrix with one d")
        self.dim = dims.pop()
        self._parts = [a for _, a in parts]
        self.ids: list[str] = []
        offsets = [0]
        for ids, a in parts:
            if len(ids) != a.shape[0]:
                raise PreselError(f"{source}: {len(ids)} ids for {a.shape[0]} feature rows; the ids file must have "
                                  "one id per row, in the same order")
            self.ids.extend(str(i) for i in ids)
            offsets.append(offsets[-1] + a.shape[0])
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def index(self) -> dict[str, int]:
        """id -> row; a duplicate id is an error."""
        if self._index is None:
            idx: dict[str, int] = {}
            for i, k in enumerate(self.ids):
                if k in idx:
                    raise PreselError(f"{self.source}: duplicate feature id '{k}' (rows {idx[k]} and {i}); "
                                      "each id must appear once")
                idx[k] = i
            self._index = idx
        return self._index

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Gather ``rows`` (global row numbers) as a float32 array, in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        part = np.searchsorted(self._offsets, rows, side="right") - 1
        for p in np.unique(part):
            dest = np.nonzero(part == p)[0]
            local = rows[dest] - self._offsets[p]
            order = np.argsort(local, kind="stable")  # sorted reads are friendlier to memory maps
            for s in range(0, len(order), 65_536):  # in blocks: no second full-size copy of the rows
                o = order[s:s + 65_536]
                out[dest[o]] = self._parts[p][local[o]]
        return out
