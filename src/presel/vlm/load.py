"""Load any Hugging Face image-text-to-text model (hub id, local directory or offline name) with its processor."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# the one dtype table and device resolver of every stage, still importable from here
from presel.devices import DTYPES, resolve_device, resolve_dtype  # noqa: F401
from presel.errors import PreselError


def load_processor(model: str | os.PathLike) -> Any:
    """The model's processor (tokenizer with its chat template + image processor), with a pad token set."""
    from transformers import AutoProcessor

    from presel.cache import resolve_model

    name = resolve_model(model)
    try:
        processor = AutoProcessor.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise PreselError(f"cannot load the processor of model '{model}' ({str(e).splitlines()[0][:200]}); "
                          "pass a local model directory, an offline name (tiny-llava, llava-small) or a hub id that "
                          "is in the Hugging Face cache") from None
    tok = getattr(processor, "tokenizer", None)
    if tok is None:
        raise PreselError(f"model '{model}': its processor has no tokenizer; presel needs an image-text-to-text "
                          "model whose AutoProcessor holds a tokenizer and an image processor")
    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return processor


def load_vlm(model: str | Path, *, dtype: str = "auto", device: str = "auto") -> tuple[Any, Any]:
    """``(model, processor)`` for any ``AutoModelForImageTextToText`` checkpoint.

    ``model``: a local directory, a hub id (from the local HF cache when offline) or an offline name
    (``tiny-llava``, ``llava-small``). ``dtype``: ``auto`` = bf16 on CUDA, fp32 on CPU; or fp32/bf16/fp16.
    ``device``: ``auto`` = ``cuda`` if available, else ``cpu``; or any torch device string.
    The model is returned in eval mode on ``device``; the chat template is the processor's own.
    """
    from transformers import AutoModelForImageTextToText

    from presel.cache import resolve_model

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    name = resolve_model(model)
    processor = load_processor(name)
    try:
        net = AutoModelForImageTextToText.from_pretrained(name, dtype=torch_dtype)
    except (OSError, ValueError) as e:
        raise PreselError(f"cannot load model '{model}' as an image-text-to-text model ({str(e).splitlines()[0][:200]}); "
                          "pass a local model directory, an offline name (tiny-llava, llava-small) or a hub id that "
                          "is in the Hugging Face cache") from None
    net.to(device)
    net.eval()
    return net, processor
