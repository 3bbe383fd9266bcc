import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

TINY_PROCESSOR = {
    "crop_size": {"height": 28, "width": 28},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "BitImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 32},
}


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory) -> Path:
    """A tiny random Dinov2Model (+ image processor config) saved with save_pretrained."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       patch_size=7, image_size=28, layerscale_value=1.0)
    d = tmp_path_factory.mktemp("tiny_dinov2")
    Dinov2Model(cfg).eval().save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps(TINY_PROCESSOR))
    return d


def build_offline_model(tmp_path_factory, name: str) -> Path:
    """presel's offline model ``name`` (tiny-llava, llava-small, ...) built into a session-tmp PRESEL_CACHE."""
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
    """presel's tiny LLaVA (presel.vlm.build), built once per session."""
    return build_offline_model(tmp_path_factory, "tiny-llava")


@pytest.fixture(scope="session")
def small_llava(tmp_path_factory) -> Path:
    """The small real LLaVA (offline DINOv2-S + SmolLM2-135M), built once per session (about 1-2 minutes)."""
    pytest.importorskip("gguf")
    return build_offline_model(tmp_path_factory, "llava-small")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    # slow tests run only when asked for: `-m slow` (or any -m expression naming slow)
    if "slow" not in (config.getoption("markexpr") or ""):
        skip_slow = pytest.mark.skip(reason="slow; run with -m slow")
        for item in items:
            if item.get_closest_marker("slow"):
                item.add_marker(skip_slow)
    if not any(item.get_closest_marker("gpu") for item in items) or _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
