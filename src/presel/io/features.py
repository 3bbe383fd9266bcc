"""Feature matrices for selection: ``.npy`` + ids file, Parquet (``id`` + vector column), or a feature store.

Arrays are memory-mapped where the format allows (``.npy``, store shards): a 1M x 768 float16
matrix is never copied whole; stages gather the rows they need (one task at a time) as float32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

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


def load_features(path: str | os.PathLike, ids_path: str | os.PathLike | None = None) -> FeatureMatrix:
    """Open features from ``.npy`` (+ ids file), Parquet, or a feature store directory."""
    path = Path(path)
    if not path.exists():
        raise PreselError(f"{path}: features not found; check --features")
    if path.is_dir():
        from presel.features.store import load_feature_matrix

        return load_feature_matrix(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if ids_path is None:
            raise PreselError(f"{path}: a .npy feature matrix needs --feature-ids (a text file, one id per line, same order)")
        try:
            arr = np.load(path, mmap_mode="r")
        except ValueError as e:
            raise PreselError(f"{path}: not a readable .npy array ({e})") from None
        if arr.ndim != 2:
            raise PreselError(f"{path}: features must be a 2-D array N x d, got shape {arr.shape}")
        if arr.dtype not in (np.float16, np.float32, np.float64):
            raise PreselError(f"{path}: features must be float16/float32/float64, got {arr.dtype}")
        from presel.io.manifest import read_id_list

        ids = read_id_list(ids_path)
        if len(ids) != arr.shape[0]:
            raise PreselError(f"{ids_path}: {len(ids)} ids but {path} has {arr.shape[0]} rows; "
                              "the ids file must list one id per feature row, in the same order")
        return FeatureMatrix([(ids, arr)], source=str(path))
    if suffix in (".parquet", ".pq"):
        from presel.io.manifest import read_parquet

        table = read_parquet(path, what="a Parquet feature file (id + one vector column)")
        if "id" not in table.column_names:
            raise PreselError(f"{path}: a Parquet feature file needs an 'id' column and one vector column")
        vec_cols = [c for c in table.column_names if c != "id"]
        col = "embedding" if "embedding" in vec_cols else ("vector" if "vector" in vec_cols else
                                                           (vec_cols[0] if len(vec_cols) == 1 else None))
        if col is None:
            raise PreselError(f"{path}: cannot tell the vector column among {vec_cols}; name it 'embedding'")
        import pyarrow as pa

        c = table.column(col).combine_chunks()
        if pa.types.is_fixed_size_list(c.type):
            arr = c.values.to_numpy(zero_copy_only=False).reshape(len(c), c.type.list_size)
        elif pa.types.is_list(c.type) or pa.types.is_large_list(c.type):
            lens = np.asarray(c.value_lengths())
            if len(lens) and (lens != lens[0]).any():
                bad = int(np.nonzero(lens != lens[0])[0][0])
                raise PreselError(f"{path}: vector of id '{table.column('id')[bad]}' has {lens[bad]} values, "
                                  f"others {lens[0]}; all vectors need one dimension")
            arr = c.flatten().to_numpy(zero_copy_only=False).reshape(len(c), int(lens[0]) if len(lens) else 0)
        else:
            raise PreselError(f"{path}: column '{col}' is not a list of floats")
        ids = [str(x) for x in table.column("id").to_pylist()]
        return FeatureMatrix([(ids, arr)], source=str(path))
    raise PreselError(f"{path}: unknown feature format; use .npy (+ --feature-ids), .parquet, or a presel feature store")
