import os
from pathlib import Path

import pytest


def _build(tmp_path_factory, name: str) -> Path:
    from presel.cache import offline_model

    cache = tmp_path_factory.mktemp(f"presel_cache_{name}")
    old = os.environ.get("PRESEL_CACHE")
    os.environ["PRESEL_CACHE"] = str(cache)
    try:
        return Path(offline_model(name))
    finally:
        if old is None:
            os.environ.pop("PRESEL_CACHE", None)
        else:
            os.environ["PRESEL_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    """presel's tiny LLaVA, built once per session into a session-tmp PRESEL_CACHE."""
    return _build(tmp_path_factory, "tiny-llava")


@pytest.fixture(scope="session")
def small_llava(tmp_path_factory) -> Path:
    """The small real LLaVA (offline DINOv2-S + SmolLM2-135M), built once per session (about 1-2 minutes)."""
    pytest.importorskip("gguf")
    return _build(tmp_path_factory, "llava-small")


@pytest.fixture(scope="session")
def tiny_loaded(tiny_llava):
    from presel.vlm.load import load_vlm

    return load_vlm(tiny_llava, dtype="fp32", device="cpu")
