"""presel.finetune: LoRA / full fine-tuning of Hugging Face VLMs on LLaVA-format data.

Public API (heavy imports happen inside the functions)::

    from presel.finetune.train import FinetuneConfig, finetune
    from presel.finetune.merge import merge_adapter, save_finetuned
    from presel.finetune.data import load_train_data
"""

from __future__ import annotations

from typing import Any

__all__ = ["FinetuneConfig", "finetune", "merge_adapter", "load_train_data"]


def __getattr__(name: str) -> Any:
    if name in ("FinetuneConfig", "finetune"):
        from presel.finetune import train

        return getattr(train, name)
    if name == "merge_adapter":
        from presel.finetune.merge import merge_adapter

        return merge_adapter
    if name == "load_train_data":
        from presel.finetune.data import load_train_data

        return load_train_data
    raise AttributeError(name)
