"""presel: pre-instruction data selection for visual instruction tuning (PreSel, CVPR 2025).

Heavy dependencies (torch, transformers, faiss, ray) are imported inside the functions that
need them, so ``import presel`` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

from presel.errors import PreselError  # noqa: E402
from presel.io.manifest import read_pool  # noqa: E402
from presel.records import Pool, PoolRecord, Turn  # noqa: E402

__all__ = ["PreselError", "Pool", "PoolRecord", "Turn", "read_pool", "__version__"]


def __getattr__(name: str):  # lazy re-exports of the stage entry points
    lazy = {
        "select": ("presel.selection.select", "select"),
        "SelectConfig": ("presel.selection.select", "SelectConfig"),
    }
    if name in lazy:
        import importlib

        mod, attr = lazy[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'presel' has no attribute {name!r}")
