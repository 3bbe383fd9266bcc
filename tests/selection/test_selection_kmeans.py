import os
import subprocess
import sys

import numpy as np
import pytest

from presel.errors import PreselError
from presel.selection.kmeans import kmeans, kmeanspp_init, n_clusters_for


def _blobs(n=600, d=16, c=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((c, d)).astype(np.float32) * 3
    x = centres[rng.integers(0, c, n)] + rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_n_clusters_for():
    assert n_clusters_for(1, 100) == 1
    assert n_clusters_for(149, 100) == 1
    assert n_clusters_for(151, 100) == 2
    assert n_clusters_for(1000, 100) == 10
    assert n_clusters_for(3, 1) == 3
    assert n_clusters_for(0, 100) == 0


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_kmeans_deterministic_canonical_and_objective(backend):
    x = _blobs()
    a = kmeans(x, 6, backend=backend, seed=3)
    b = kmeans(x, 6, backend=backend, seed=3)
    assert (a.labels == b.labels).all() and np.array_equal(a.centroids, b.centroids) and a.objective == b.objective
    # canonical numbering: cluster j's first member comes before cluster j+1's
    firsts = [int(np.nonzero(a.labels == j)[0][0]) for j in range(a.n_clusters)]
    assert firsts == sorted(firsts) and firsts[0] == 0
    # objective = sum of squared distances to the assigned centroid, and the assignment is the nearest one
    d = ((x[:, None, :].astype(np.float64) - a.centroids[None].astype(np.float64)) ** 2).sum(-1)
    assert (np.argmin(d, axis=1) == a.labels).mean() > 0.99
    np.testing.assert_allclose(a.objective, d[np.arange(len(x)), a.labels].sum(), rtol=1e-4)


def test_faiss_close_to_sklearn_objective():
    x = _blobs(n=2000, d=32, c=20, seed=1)
    f = kmeans(x, 20, backend="faiss", seed=0)
    s = kmeans(x, 20, backend="sklearn", seed=12345)
    assert f.objective <= s.objective * 1.02


def test_kmeans_edge_cases():
    x = _blobs(n=10)
    one = kmeans(x, 1)
    assert one.labels.tolist() == [0] * 10 and one.n_clusters == 1
    allc = kmeans(x, 10, seed=0)
    assert sorted(allc.labels.tolist()) == list(range(10))
    with pytest.raises(PreselError, match="n_clusters=11"):
        kmeans(x, 11)
    with pytest.raises(PreselError, match="kmeans_backend"):
        kmeans(x, 2, backend="nope")


def test_kmeanspp_init_picks_distinct_rows():
    x = _blobs(n=300, d=80)
    init = kmeanspp_init(x, 12, np.random.default_rng(0), dim=8)
    assert init.shape == (12, 80)
    assert len({tuple(r) for r in init.tolist()}) == 12
    rows = {tuple(r) for r in x.tolist()}
    assert all(tuple(r) in rows for r in init.tolist())


_PROBE = """
import os, sys
from presel.selection.kmeans import _import_faiss, _openblas_coretype
_import_faiss()
import threadpoolctl
arch = [i.get('architecture') for i in threadpoolctl.threadpool_info() if 'faiss' in (i.get('filepath') or '')]
print(os.environ.get('OPENBLAS_CORETYPE'), _openblas_coretype(), arch)
"""


def test_import_faiss_sets_kernel_then_restores_env():
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True).stdout.split()
    after, chosen, arch = out[0], out[1], " ".join(out[2:])
    assert after == "None"  # not left in the environment for child processes
    if chosen != "None":
        assert chosen in arch
    env["OPENBLAS_CORETYPE"] = "Haswell"  # a value the environment sets is left alone
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "Haswell"
    if arch != "[]":  # faiss wheels that bundle no OpenBLAS of their own (some 1.7-1.13 builds) have no kernel to check
        assert "Haswell" in " ".join(out[2:])
