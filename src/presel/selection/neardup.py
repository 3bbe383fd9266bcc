"""Near-duplicate images from their features: faiss range search + connected components.

Two images are near-duplicates when the cosine similarity of their (L2-normalised) features is at least
``threshold``; a *group* is a connected component of that relation. One image per group is kept (the first
in key order, or in pool order when a pool is given); ``presel select --dedup DIR`` drops the rest.

Search (:func:`range_pairs`): an exact flat index for small inputs; above ``exact_max`` rows an IVF index
with 8-bit scalar-quantised vectors (``nlist ~ 2.5 sqrt(N)`` cells, ``nprobe`` probed), queried in blocks at
``threshold - margin``, and every candidate pair re-scored exactly from the stored vectors. The vectors are
never all held as float32: memory is the quantised index (N x d bytes) plus one block. The benchmark
(``benchmarks/dedup_bench.py``) measures recall against exact search on a sample of queries.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from presel.config import neutral
from presel.errors import PreselError

SCOPES = ("all", "task")


@dataclass
class DedupConfig:
    """threshold: cosine similarity at or above which two images are near-duplicates (0 < t <= 1).
    scope: 'all' (across tasks; needs no pool) or 'task' (only images sharing a task; needs a pool).
    exact_max: up to this many rows, exact flat search. nlist: IVF cells (default ~2.5 sqrt(N)).
    nprobe: cells probed per query. margin: candidates are searched at threshold - margin, then re-scored.
    block: query rows per range search call. seed: k-means training sample."""

    threshold: float = 0.95
    scope: str = "all"
    exact_max: int = 20_000
    nlist: int | None = None
    nprobe: int = 4
    margin: float = 0.015
    block: int = neutral(16_384)  # query rows per call: how fast, not what
    seed: int = 0
    threads: int | None = neutral(None)

    def __post_init__(self) -> None:
        if not (0 < float(self.threshold) <= 1):
            raise PreselError(f"threshold={self.threshold} must be in (0, 1]; e.g. --threshold 0.95")
        if self.scope not in SCOPES:
            raise PreselError(f"scope={self.scope!r} must be one of {', '.join(SCOPES)}")
        for name in ("nprobe", "block", "nlist"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise PreselError(f"{name}={v} must be >= 1" + (" (or unset for ~2.5 sqrt(N))" if name == "nlist" else ""))


def _normalized(a: np.ndarray) -> np.ndarray:
    x = np.asarray(a, dtype=np.float32).copy()
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1.0
    x /= n
    return x


def range_pairs(get_rows: Callable[[int, int], np.ndarray], n: int, dim: int, cfg: DedupConfig,
                *, force_exact: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j, sim)`` with ``i < j`` and cosine ``sim >= cfg.threshold`` among rows ``0..n-1``;
    ``get_rows(start, stop)`` returns those rows (any float dtype, not necessarily normalised)."""
    import faiss

    if cfg.threads:
        faiss.omp_set_num_threads(int(cfg.threads))
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    exact = force_exact or n <= cfg.exact_max
    thr = float(cfg.threshold)
    if exact:
        index = faiss.IndexFlatIP(dim)
        radius = thr - 1e-6
    else:
        nlist = cfg.nlist or max(1, min(65536, int(round(2.5 * math.sqrt(n)))))
        quant = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(quant, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10  # coarse cells only route queries; a rough k-means is enough
        n_train = min(n, max(16 * nlist, 10_000))
        rng = np.random.default_rng(cfg.seed)
        sample = np.sort(rng.choice(n, size=n_train, replace=False))
        train = np.concatenate([_normalized(get_rows(int(s), int(s) + 1)) for s in sample]) if n_train < n // 4 \
            else _normalized(get_rows(0, n))[sample]
        index.train(train)
        del train
        index.nprobe = min(cfg.nprobe, nlist)
        radius = thr - cfg.margin
    for s in range(0, n, cfg.block):
        index.add(_normalized(get_rows(s, min(n, s + cfg.block))))
    out_i, out_j, out_s = [], [], []
    for s in range(0, n, cfg.block):
        q = _normalized(get_rows(s, min(n, s + cfg.block)))
        lims, dist, ids = index.range_search(q, radius)
        qi = np.repeat(np.arange(s, s + len(q), dtype=np.int64), np.diff(lims.astype(np.int64)))
        ids = ids.astype(np.int64)
        keep = ids > qi
        qi, ids, dist = qi[keep], ids[keep], dist[keep]
        if not exact and len(qi):  # re-score candidates exactly; the quantised similarity is approximate
            order = np.argsort(ids, kind="stable")
            uj, inv = np.unique(ids[order], return_inverse=True)
            vj = np.concatenate([_normalized(get_rows(int(j), int(j) + 1)) for j in uj]) if len(uj) < 4096 \
                else _gather(get_rows, uj, n, cfg.block)
            sims = np.empty(len(qi), np.float32)
            sims[order] = np.einsum("ij,ij->i", q[qi[order] - s], vj[inv])
            dist = sims
        m = dist >= thr - 1e-6
        out_i.append(qi[m])
        out_j.append(ids[m])
        out_s.append(np.minimum(dist[m], 1.0).astype(np.float32))
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


def _gather(get_rows: Callable[[int, int], np.ndarray], rows: np.ndarray, n: int, block: int) -> np.ndarray:
    """Normalised rows ``rows`` (sorted, unique), read block by block."""
    out = np.empty((len(rows), 0), np.float32)
    parts = []
    for s in range(0, n, block):
        m = (rows >= s) & (rows < s + block)
        if m.any():
            parts.append(_normalized(get_rows(s, min(n, s + block)))[rows[m] - s])
    if parts:
        out = np.concatenate(parts)
    return out


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label (the smallest member index) of each of ``n`` nodes."""
    parent = np.arange(n, dtype=np.int64)

    def find(a: int) -> int:
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    for a, b in zip(i.tolist(), j.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.fromiter((find(a) for a in range(n)), dtype=np.int64, count=n)


def find_groups(features: Any, keys: Sequence[str], cfg: DedupConfig,
                tasks_of: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Groups of near-duplicate images among ``keys`` (ids of ``features``, in keep-priority order).

    Returns ``{"groups": table columns, "pairs": table columns, "summary": ...}``."""
    index = features.index
    missing = [k for k in keys if k not in index]
    if missing:
        raise PreselError(f"{features.source}: no features for {len(missing)} image(s), e.g. {missing[0]}; embed "
                          "the pool first")
    rows = np.asarray([index[k] for k in keys], dtype=np.int64)
    if cfg.scope == "task":
        if tasks_of is None:
            raise PreselError("scope=task needs the pool (--pool) to know each image's task")
        blocks: dict[str, list[int]] = {}
        for p, k in enumerate(keys):
            for t in tasks_of.get(k, []):
                blocks.setdefault(t, []).append(p)
        block_list = [np.asarray(v, dtype=np.int64) for _, v in sorted(blocks.items())]
    else:
        block_list = [np.arange(len(keys), dtype=np.int64)]
    pi, pj, ps = [], [], []
    for members in block_list:
        sub = rows[members]

        def get(a: int, b: int, sub=sub) -> np.ndarray:
            x = features.rows(sub[a:b])
            bad = ~np.isfinite(x).all(axis=1)
            if bad.any():  # as select refuses them: NaN would group nothing and keep every copy silently
                k = keys[int(np.nonzero(rows == sub[a + int(np.argmax(bad))])[0][0])]
                raise PreselError(f"{features.source}: features of '{k}' contain NaN or inf ({int(bad.sum())} row(s) "
                                  f"in this block do); re-extract the features of those images (presel embed)")
            return x

        i, j, s = range_pairs(get, len(sub), features.dim, cfg)
        pi.append(members[i])
        pj.append(members[j])
        ps.append(s)
    i = np.concatenate(pi) if pi else np.zeros(0, np.int64)
    j = np.concatenate(pj) if pj else np.zeros(0, np.int64)
    s = np.concatenate(ps) if ps else np.zeros(0, np.float32)
    if len(i):  # a pair found in two task blocks counts once
        uniq = np.unique(np.stack([i, j], 1), axis=0, return_index=True)[1]
        i, j, s = i[uniq], j[uniq], s[uniq]
    label = components(len(keys), i, j)
    sizes = np.bincount(label, minlength=len(keys))
    in_group = np.nonzero(sizes[label] > 1)[0]
    # group numbers by size (largest first), ties by the kept image's position
    reps = np.unique(label[in_group])
    rep_order = sorted(reps.tolist(), key=lambda r: (-int(sizes[r]), r))
    gid = {r: g for g, r in enumerate(rep_order)}
    members_sorted = sorted(in_group.tolist(), key=lambda p: (gid[int(label[p])], p))
    rep_vec = {r: features.rows(rows[[r]])[0] for r in rep_order}
    groups: dict[str, list[Any]] = {"group": [], "key": [], "keep": [], "size": [], "sim_to_kept": [], "tasks": []}
    for p in members_sorted:
        r = int(label[p])
        a, b = rep_vec[r], features.rows(rows[[p]])[0]
        sim = float(a @ b / ((np.linalg.norm(a) * np.linalg.norm(b)) or 1.0))
        groups["group"].append(gid[r])
        groups["key"].append(keys[p])
        groups["keep"].append(p == r)
        groups["size"].append(int(sizes[r]))
        groups["sim_to_kept"].append(round(min(sim, 1.0), 6))
        groups["tasks"].append(",".join(tasks_of.get(keys[p], [])) if tasks_of else "")
    pairs = {"key_a": [keys[a] for a in i.tolist()], "key_b": [keys[b] for b in j.tolist()],
             "sim": [round(float(x), 6) for x in s.tolist()]}
    dropped = len(in_group) - len(rep_order)
    summary = {"images": len(keys), "pairs": int(len(i)), "groups": len(rep_order),
               "images_in_groups": int(len(in_group)), "dropped": int(dropped), "kept": len(keys) - int(dropped),
               "largest_group": int(sizes[rep_order[0]]) if rep_order else 0,
               "search": "exact" if len(keys) <= cfg.exact_max else "ivf-sq8",
               "threshold": cfg.threshold, "scope": cfg.scope}
    return {"groups": groups, "pairs": pairs, "summary": summary}


def dedup_to_dir(features: Any, out: str | os.PathLike, cfg: DedupConfig, *, pool: Any = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Find near-duplicate groups and write ``groups.parquet``, ``pairs.parquet``, ``keep.txt`` (image keys to
    keep, one per line), ``summary.json``, ``config.json`` to ``out`` atomically."""
    import pyarrow as pa

    from presel.config import resolved_config
    from presel.io.atomic import atomic_dir, write_json, write_parquet

    if pool is not None:
        from presel.selection.duplicates import content_keys

        ckeys, _ = content_keys(pool, features)
        keys = list(dict.fromkeys(ckeys))  # pool order; byte-identical images are one image already
        tasks_of: dict[str, list[str]] | None = {}
        for r, k in zip(pool.records, ckeys):
            ts = tasks_of.setdefault(k, [])  # type: ignore[union-attr]
            if r.task not in ts:
                ts.append(r.task)
    else:
        keys = sorted(features.ids)
        tasks_of = None
    res = find_groups(features, keys, cfg, tasks_of)
    g = res["groups"]
    drop = {k for k, keep in zip(g["key"], g["keep"]) if not keep}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_parquet(tmp / "groups.parquet", pa.table({
            "group": pa.array(g["group"], pa.int64()), "key": pa.array(g["key"], pa.string()),
            "keep": pa.array(g["keep"], pa.bool_()), "size": pa.array(g["size"], pa.int64()),
            "sim_to_kept": pa.array(g["sim_to_kept"], pa.float32()), "tasks": pa.array(g["tasks"], pa.string())}))
        p = res["pairs"]
        write_parquet(tmp / "pairs.parquet", pa.table({"key_a": pa.array(p["key_a"], pa.string()),
                                                       "key_b": pa.array(p["key_b"], pa.string()),
                                                       "sim": pa.array(p["sim"], pa.float32())}))
        (tmp / "keep.txt").write_text("".join(k + "\n" for k in keys if k not in drop), encoding="utf-8")
        write_json(tmp / "summary.json", res["summary"])
        write_json(tmp / "config.json", resolved_config("dedup", cfg, features=str(features.source),
                                                        pool=None if pool is None else str(pool.source)))
    return res["summary"]
