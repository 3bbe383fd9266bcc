"""The 2-D projection of a run's image features, cached in the run and resumable.

Steps (each one a file in the cache folder, written atomically, so an interrupted run resumes at the
step and chunk it reached):

1. ``reduced.npy``: the L2-normalised features reduced to ``pca_dims`` by a PCA fitted on a seeded
   sample (streamed in chunks: a 1M x 768 matrix is never held whole);
2. ``fit.npy`` + ``model.pkl``: UMAP (``umap-learn``, approximate neighbours by ``pynndescent``) fitted on
   a seeded sample of at most ``fit_sample`` points;
3. ``chunks/NNNNN.npy``: every other point placed by the fitted model's ``transform``, ``chunk`` points
   at a time (the sample-then-transform scheme for large pools);
4. ``xy.npy``: the N x 2 projection, rows in the order of the points.

``identity.json`` holds the key (settings + a hash of the point ids and of every feature value); a
different key clears the folder's own files (only the names above) and starts again. Same features,
settings and seed give byte-identical output (UMAP with a ``random_state`` runs single-threaded).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from presel.errors import PreselError

METHODS = ("umap", "pca")
_OWN = ("identity.json", "reduced.npy", "fit.npy", "model.pkl", "xy.npy")


@dataclass
class MapConfig:
    """Settings of ``presel map``.

    method: umap (``umap-learn``) | pca (the first two principal components; no extra dependency).
    n_neighbors, min_dist: UMAP's own.
    pca_dims: the features are reduced to this many principal components before UMAP.
    fit_sample: UMAP is fitted on at most this many points (seeded sample); the others are transformed.
    chunk: points transformed (and cached) per step.
    seed: every random choice (PCA sample, UMAP sample, UMAP itself) derives from it.
    thumb_size: thumbnail edge in pixels (0: no thumbnails).
    """

    method: str = "umap"
    n_neighbors: int = 15
    min_dist: float = 0.1
    pca_dims: int = 50
    fit_sample: int = 50_000
    chunk: int = 50_000
    seed: int = 0
    thumb_size: int = 96

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PreselError(f"method={self.method!r} must be one of {', '.join(METHODS)}")
        for name, lo in (("n_neighbors", 2), ("pca_dims", 2), ("fit_sample", 100), ("chunk", 100), ("seed", 0),
                         ("thumb_size", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise PreselError(f"{name}={v!r} must be an integer >= {lo}")
        if isinstance(self.min_dist, bool) or not isinstance(self.min_dist, (int, float)) or not 0 <= self.min_dist <= 1:
            raise PreselError(f"min_dist={self.min_dist!r} must be a number in [0, 1]")

    def projection_settings(self) -> dict:
        """The settings the projection depends on (thumbnails do not change it)."""
        d = asdict(self)
        d.pop("thumb_size")
        return d


Rows = Callable[[np.ndarray], np.ndarray]  # global point indices -> float32 feature rows


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1)


def _save(path: Path, arr: np.ndarray) -> None:
    from presel.io.atomic import atomic_file

    with atomic_file(path, "wb") as f:
        np.save(f, arr)


def _key(ids: Sequence[str], rows: Rows, n: int, dim: int, cfg: MapConfig, chunk: int) -> str:
    h = hashlib.sha256(json.dumps({"settings": cfg.projection_settings(), "n": n, "dim": dim}).encode())
    for i in ids:
        h.update(i.encode("utf-8") + b"\0")
    for s in range(0, n, chunk):
        h.update(np.ascontiguousarray(rows(np.arange(s, min(n, s + chunk))), dtype=np.float32).tobytes())
    return h.hexdigest()


def _prepare(cache: Path, key: str) -> None:
    """Keep the cache of the same key; otherwise remove its own files (nothing else) and start again."""
    ident = cache / "identity.json"
    if ident.is_file():
        try:
            same = json.loads(ident.read_text()).get("key") == key
        except (OSError, json.JSONDecodeError):
            same = False
        if same:
            return
        for name in _OWN:
            (cache / name).unlink(missing_ok=True)
        chunks = cache / "chunks"
        for p in chunks.glob("*.npy") if chunks.is_dir() else ():
            p.unlink()
    elif cache.is_dir() and any(cache.iterdir()):
        raise PreselError(f"{cache}: exists and was not written by presel map (no identity.json); move it away")
    from presel.io.atomic import write_json

    cache.mkdir(parents=True, exist_ok=True)
    write_json(ident, {"key": key})


def _reduce(cache: Path, rows: Rows, n: int, dim: int, cfg: MapConfig, step: int) -> np.ndarray:
    out = cache / "reduced.npy"
    if out.is_file():
        return np.load(out)
    rng = np.random.default_rng(cfg.seed)
    sample = np.sort(rng.choice(n, size=min(n, max(cfg.fit_sample, 10_000)), replace=False))
    xs = _normalised(rows(sample)).astype(np.float64)
    mean = xs.mean(axis=0)
    xs -= mean
    k = max(2, min(cfg.pca_dims, dim, len(sample)))
    vals, vecs = np.linalg.eigh(xs.T @ xs)  # d x d covariance: cheaper than an SVD of the sample
    comp = vecs[:, np.argsort(-vals, kind="stable")[:k]].T.copy()
    comp *= np.where(comp[np.arange(k), np.abs(comp).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]  # fixed signs
    del xs
    red = np.empty((n, k), dtype=np.float32)
    for s in range(0, n, step):
        idx = np.arange(s, min(n, s + step))
        red[idx] = ((_normalised(rows(idx)).astype(np.float64) - mean) @ comp.T).astype(np.float32)
    _save(out, red)
    return red


def _umap(cfg: MapConfig, n: int):
    import umap

    return umap.UMAP(n_neighbors=min(cfg.n_neighbors, n - 1), min_dist=float(cfg.min_dist), n_components=2,
                     random_state=cfg.seed, n_jobs=1, low_memory=True, transform_seed=cfg.seed, verbose=False)


def project(ids: Sequence[str], rows: Rows, dim: int, cache: str | os.PathLike, cfg: MapConfig, *,
            progress: bool = True, log: Callable[[str], None] = print) -> np.ndarray:
    """The N x 2 projection (float32) of the points ``ids`` whose features ``rows`` returns; cached in ``cache``."""
    cache = Path(cache)
    n = len(ids)
    if n == 0:
        raise PreselError("the map needs at least one point with features; the run has none")
    if cfg.method == "umap":
        try:
            import umap  # noqa: F401
        except ImportError:
            raise PreselError("presel map --method umap needs umap-learn: pip install 'presel[map]' "
                              "(or pass --method pca)") from None
    step = min(cfg.chunk, 20_000)
    key = _key(ids, rows, n, dim, cfg, step)
    _prepare(cache, key)
    if (cache / "xy.npy").is_file():
        return np.load(cache / "xy.npy")
    red = _reduce(cache, rows, n, dim, cfg, step)
    if cfg.method == "pca" or n <= cfg.n_neighbors + 1:  # pca, or too few points for a neighbour graph
        xy = red[:, :2].astype(np.float32)
        _save(cache / "xy.npy", xy)
        return xy
    from tqdm import tqdm

    rng = np.random.default_rng(cfg.seed + 1)
    fit_idx = np.sort(rng.choice(n, size=min(n, cfg.fit_sample), replace=False)) if n > cfg.fit_sample else np.arange(n)
    rest = np.setdiff1d(np.arange(n), fit_idx, assume_unique=True)
    bar = tqdm(total=n, desc="map: UMAP", unit="pt", disable=not progress, mininterval=1.0)
    xy = np.empty((n, 2), dtype=np.float32)
    model = None
    if (cache / "fit.npy").is_file() and (cache / "model.pkl").is_file():
        xy[fit_idx] = np.load(cache / "fit.npy")
        if len(rest):
            with open(cache / "model.pkl", "rb") as f:  # written by presel map into this cache (identity.json)
                model = pickle.load(f)
    else:
        if progress:
            log(f"map: fitting UMAP on {len(fit_idx):,} of {n:,} points ({red.shape[1]} principal components)")
        model = _umap(cfg, len(fit_idx)).fit(red[fit_idx])
        emb = np.asarray(model.embedding_, dtype=np.float32)
        if len(rest):
            from presel.io.atomic import atomic_file

            with atomic_file(cache / "model.pkl", "wb") as f:
                pickle.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL)
        _save(cache / "fit.npy", emb)
        xy[fit_idx] = emb
    bar.update(len(fit_idx))
    chunks = cache / "chunks"
    chunks.mkdir(exist_ok=True)
    for c, s in enumerate(range(0, len(rest), cfg.chunk)):
        idx = rest[s:s + cfg.chunk]
        p = chunks / f"{c:05d}.npy"
        if p.is_file():
            part = np.load(p)
        else:
            part = np.asarray(model.transform(red[idx]), dtype=np.float32)
            _save(p, part)
        xy[idx] = part
        bar.update(len(idx))
    bar.close()
    _save(cache / "xy.npy", xy)
    return xy
