"""The projection's sample-then-transform scheme: UMAP fitted on a sample, the rest transformed chunk by chunk,
each chunk a file an interrupted run resumes from."""

import numpy as np
import pytest

from presel.errors import PreselError
from presel.map.project import MapConfig, project

pytest.importorskip("umap", reason="umap-learn is the optional extra 'map'")


def _blobs(n=350, d=8, k=5, seed=0):
    rng = np.random.default_rng(seed)
    label = np.arange(n) % k
    centres = rng.normal(size=(k, d)) * 6
    return (centres[label] + rng.normal(size=(n, d))).astype(np.float32), label


def test_sample_then_transform_resumes_chunk_by_chunk(tmp_path):
    x, label = _blobs()
    ids = [f"p{i}" for i in range(len(x))]
    cfg = MapConfig(fit_sample=100, chunk=100, n_neighbors=10)
    cache = tmp_path / "proj"
    xy = project(ids, lambda idx: x[idx], x.shape[1], cache, cfg, progress=False)
    assert xy.shape == (350, 2) and np.isfinite(xy).all()
    chunks = sorted((cache / "chunks").glob("*.npy"))
    assert [c.name for c in chunks] == ["00000.npy", "00001.npy", "00002.npy"]  # 250 transformed points
    # the transformed points land with the fitted points of their own blob
    fit = np.load(cache / "fit.npy")
    fit_idx = np.sort(np.random.default_rng(cfg.seed + 1).choice(350, size=100, replace=False))
    assert np.array_equal(fit, xy[fit_idx])
    rest = np.setdiff1d(np.arange(350), fit_idx)
    d = ((xy[rest][:, None, :] - fit[None, :, :]) ** 2).sum(-1)
    assert (label[fit_idx][d.argmin(1)] == label[rest]).mean() > 0.95
    # an interrupted run (result and the last two chunks missing) resumes: the fit and chunk 0 are reused
    kept = {p: p.stat().st_mtime_ns for p in (cache / "fit.npy", cache / "model.pkl", chunks[0])}
    for p in (cache / "xy.npy", chunks[1], chunks[2]):
        p.unlink()
    again = project(ids, lambda idx: x[idx], x.shape[1], cache, cfg, progress=False)
    assert again.tobytes() == xy.tobytes()
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    # other features: a new key, the cache's own files are replaced
    y = x.copy()
    y[0, 0] += 1
    project(ids, lambda idx: y[idx], y.shape[1], cache, cfg, progress=False)
    assert not np.array_equal(np.load(cache / "fit.npy"), fit)


def test_settings_are_checked():
    with pytest.raises(PreselError, match="method='tsne' must be one of umap, pca"):
        MapConfig(method="tsne")
    with pytest.raises(PreselError, match="min_dist=2 must be a number in"):
        MapConfig(min_dist=2)
