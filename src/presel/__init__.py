"""presel: pre-instruction data selection for visual instruction tuning (PreSel, CVPR 2025).

The stage entry points are importable from here (``presel.select``, ``presel.embed_pool``,
``presel.score_to_dir``, ``presel.run_config``, ...); fine-tuning is ``presel.finetune.train.finetune``.

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
        "select_to_dir": ("presel.selection.select", "select_to_dir"),
        "SelectConfig": ("presel.selection.select", "SelectConfig"),
        "embed_pool": ("presel.features.extract", "embed_pool"),
        "EmbedConfig": ("presel.features.extract", "EmbedConfig"),
        "reference_to_dir": ("presel.importance.reference", "reference_to_dir"),
        "score_to_dir": ("presel.importance.scoring", "score_to_dir"),
        "ScoreConfig": ("presel.importance.scoring", "ScoreConfig"),
        "compute_weights": ("presel.importance.weights", "compute_weights"),
        "FinetuneConfig": ("presel.finetune.train", "FinetuneConfig"),
        "generate_to_dir": ("presel.generate.online", "generate_to_dir"),
        "oracle_to_dir": ("presel.generate.oracle", "oracle_to_dir"),
        "build_report": ("presel.report.html", "build_report"),
        "evaluate_model": ("presel.evaluate", "evaluate_model"),
        "RunConfig": ("presel.pipeline", "RunConfig"),
        "run_config": ("presel.pipeline", "run_config"),
    }
    if name in lazy:
        import importlib

        mod, attr = lazy[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'presel' has no attribute {name!r}")
