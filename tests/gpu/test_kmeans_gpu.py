"""k-means on the GPU (faiss with CUDA): what ``kmeans_backend: faiss`` picks when there is a device.
Skipped without CUDA (tests/conftest.py); skipped with its reason where faiss has no GPU support."""

import numpy as np
import pytest

from presel.selection import kmeans as km

pytestmark = pytest.mark.gpu


@pytest.fixture
def gpu_faiss():
    if km.faiss_gpus() == 0:
        pytest.skip("this faiss has no GPU support or sees no CUDA device (pip install faiss-gpu-cu12)")


def _blobs(n=20_000, d=64, c=50, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((c, d)).astype(np.float32)[rng.integers(0, c, n)] + \
        0.5 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_faiss_backend_runs_on_the_gpu_and_matches_cpu(gpu_faiss):
    assert km.resolve_backend("faiss") == "faiss-gpu"
    x = _blobs()
    g = km.kmeans(x, 200, backend="faiss-gpu", seed=0)
    c = km.kmeans(x, 200, backend="faiss-cpu", seed=0)
    assert g.n_clusters == 200 and len(np.unique(g.labels)) == 200
    assert abs(g.objective / c.objective - 1) < 0.02
    h = km.hierarchical_kmeans(x, 200, backend="faiss-gpu", seed=0)
    assert h.n_clusters == 200 and h.objective <= 1.05 * c.objective
