"""Near-duplicate search benchmark: N x d float16 features (memory-mapped), planted near-copies.

The pool: clustered unit vectors (cluster members have cosine ~0.75-0.9 to each other, so many pairs sit
near but below the threshold), plus ``--copies`` planted near-copies of random images (cosine 0.96-0.995 to
their original). Reports wall time, peak RSS, pairs and groups found, recall of the planted pairs, and recall
against exact (flat) range search for ``--sample`` query rows.

    nice -n 10 python benchmarks/dedup_bench.py --n 665000 --dim 768 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def make_pool(path: Path, n: int, dim: int, copies: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Write an n x dim float16 .npy; return the planted pairs (original, copy) as two row arrays."""
    rng = np.random.default_rng(seed)
    n_clusters = max(1, n // 200)
    centers = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    base = n - copies
    block = 32768
    for s in range(0, base, block):
        e = min(base, s + block)
        c = rng.integers(0, n_clusters, e - s)
        noise = rng.standard_normal((e - s, dim)).astype(np.float32) / np.sqrt(dim)
        spread = rng.uniform(0.4, 0.7, (e - s, 1)).astype(np.float32)
        x = centers[c] + spread * noise
        arr[s:e] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    orig = np.sort(rng.choice(base, size=copies, replace=False))
    for s in range(0, copies, block):
        o = orig[s:s + block]
        x = np.asarray(arr[o], dtype=np.float32)
        noise = rng.standard_normal(x.shape).astype(np.float32) / np.sqrt(dim)
        eps = rng.uniform(0.1, 0.28, (len(o), 1)).astype(np.float32)  # cosine ~ 1/sqrt(1+eps^2): 0.963-0.995
        y = x + eps * noise
        arr[base + s:base + s + len(o)] = (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float16)
    arr.flush()
    del arr
    return orig, np.arange(base, n)


def _cpu() -> float:
    """CPU seconds (user + system) of this process: on a shared machine, wall time / threads overstates work."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=665_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--copies", type=int, default=5_000, help="planted near-copies")
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--nprobe", type=int, default=4)
    ap.add_argument("--nlist", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sample", type=int, default=1000, help="query rows checked against exact search")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="where to write the features (default: a temporary folder)")
    a = ap.parse_args()

    import faiss

    from presel.selection.neardup import DedupConfig, components, range_pairs

    faiss.omp_set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        path = Path(d) / "features.npy"
        t0 = time.perf_counter()
        orig, copy = make_pool(path, a.n, a.dim, a.copies, a.seed)
        t_gen = time.perf_counter() - t0
        x = np.load(path, mmap_mode="r")
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cfg = DedupConfig(threshold=a.threshold, nprobe=a.nprobe, nlist=a.nlist, exact_max=0, threads=a.threads)
        t0, c0 = time.perf_counter(), _cpu()
        i, j, s = range_pairs(lambda lo, hi: x[lo:hi], a.n, a.dim, cfg)
        t_search, c_search = time.perf_counter() - t0, _cpu() - c0
        label = components(a.n, i, j)
        sizes = np.bincount(label, minlength=a.n)
        groups = int((sizes > 1).sum())
        found = set(zip(i.tolist(), j.tolist()))
        # planted pairs above the threshold (exact cosine from the stored float16 vectors)
        xo = np.asarray(x[orig], np.float32)
        xc = np.asarray(x[copy], np.float32)
        cos = np.einsum("ij,ij->i", xo / np.linalg.norm(xo, axis=1, keepdims=True),
                        xc / np.linalg.norm(xc, axis=1, keepdims=True))
        planted = [(int(o), int(c)) for o, c, v in zip(orig, copy, cos) if v >= a.threshold]
        planted_recall = sum(p in found for p in planted) / max(1, len(planted))
        # exact search for a sample of query rows against all rows
        rng = np.random.default_rng(a.seed + 1)
        q_rows = np.sort(np.concatenate([rng.choice(a.n, size=a.sample // 2, replace=False),
                                         rng.choice(copy, size=min(len(copy), a.sample - a.sample // 2),
                                                    replace=False)]))
        q = np.asarray(x[q_rows], np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        t0 = time.perf_counter()
        truth = set()
        for lo in range(0, a.n, 65536):
            b = np.asarray(x[lo:lo + 65536], np.float32)
            b /= np.linalg.norm(b, axis=1, keepdims=True)
            sim = q @ b.T
            qi, bj = np.nonzero(sim >= a.threshold - 1e-6)
            for u, v in zip(q_rows[qi].tolist(), (bj + lo).tolist()):
                if u != v:
                    truth.add((min(u, v), max(u, v)))
        t_exact = time.perf_counter() - t0
        sample_recall = sum(p in found for p in truth) / max(1, len(truth))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({
            "n": a.n, "dim": a.dim, "dtype": "float16", "threads": a.threads, "threshold": a.threshold,
            "nprobe": a.nprobe, "generate_s": round(t_gen, 1), "search_s": round(t_search, 1),
            "search_cpu_s": round(c_search, 1), "load_avg_1m": round(os.getloadavg()[0], 1),
            "pairs_found": len(found), "groups": groups, "planted_pairs_above_threshold": len(planted),
            "planted_recall": round(planted_recall, 4), "sample_queries": int(len(q_rows)),
            "sample_true_pairs": len(truth), "sample_recall": round(sample_recall, 4),
            "exact_sample_s": round(t_exact, 1), "rss_before_search_mb": round(rss0),
            "peak_rss_mb": round(peak)}, indent=1))


if __name__ == "__main__":
    main()
