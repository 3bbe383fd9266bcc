"""Turn a trained model into a standalone model directory: ``adapter/`` (PEFT, LoRA runs) + merged weights.

The merged directory holds the model (safetensors + ``config.json``) and the processor (tokenizer, image
processor, chat template), so ``load_vlm(dir)``, ``AutoModelForImageTextToText.from_pretrained(dir)`` and
``presel score --model dir`` all load it without the base model or PEFT.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from presel.errors import PreselError

ADAPTER_DIR = "adapter"


def is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def save_finetuned(model: Any, processor: Any, out: str | os.PathLike, *, dtype: str | None = None) -> Path:
    """Save ``model`` (a ``PeftModel`` or a plain transformers model) and ``processor`` into ``out``.

    A ``PeftModel`` is saved as ``out/adapter/`` first, then merged into its base weights (in place: the
    object is no longer a ``PeftModel`` afterwards). ``dtype`` (``bf16``/``fp32``) casts the saved weights;
    None keeps them. Gradient checkpointing is switched off so the saved config is an inference config.
    """
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if is_peft_model(model):
        model.save_pretrained(out / ADAPTER_DIR)
        model = model.merge_and_unload()
    if hasattr(model, "activation_checkpointing_disable"):  # transformers >= 5.2x name
        model.activation_checkpointing_disable()
    elif getattr(model, "supports_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()
    _drop_gguf_marker(model)
    if dtype is not None:
        model = model.to({"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def merge_adapter(
    adapter: str | os.PathLike,
    out: str | os.PathLike,
    *,
    base: str | os.PathLike | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    overwrite: bool = False,
) -> Path:
    """Merge a saved PEFT adapter (e.g. ``ckpt/ref/adapter``) into its base model and save a standalone model.

    ``base`` defaults to the adapter's ``base_model_name_or_path``; offline names (``tiny-llava``) work.
    """
    from peft import PeftModel

    from presel.cache import resolve_model
    from presel.io.atomic import atomic_dir, write_json
    from presel.vlm.load import load_vlm

    adapter = Path(adapter)
    cfg_path = adapter / "adapter_config.json"
    if not cfg_path.exists():
        raise PreselError(f"{adapter}: no adapter_config.json; pass the adapter folder of a LoRA run (<out>/adapter)")
    if base is None:
        base = json.loads(cfg_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise PreselError(f"{cfg_path}: no base_model_name_or_path; pass the base model explicitly")
    model, processor = load_vlm(resolve_model(base), dtype=dtype, device=device)
    peft_model = PeftModel.from_pretrained(model, str(adapter))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_finetuned(peft_model, processor, tmp)
        # presel's record of what it wrote: also what lets --overwrite replace this folder later
        write_json(tmp / "presel_source.json", {"model": str(base), "adapter": str(adapter), "dtype": dtype})
    return Path(out)


def _drop_gguf_marker(model: Any) -> None:
    """Forget a ``gguf`` quantization marker: transformers dequantizes GGUF weights on load, so such a model
    holds plain float tensors, but the inherited ``quantization_config`` (e.g. in ``text_config`` of the
    offline ``llava-small``) makes ``save_pretrained`` refuse to save it. Other quantizations are kept."""
    q = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(q, "quantization_config", None), "quant_method", None)
    if q is not None and str(getattr(method, "value", method)) != "gguf":
        return
    if q is not None:
        model.hf_quantizer = None
    for cfg in (getattr(model, "config", None), *(getattr(getattr(model, "config", None), k, None)
                                                   for k in ("text_config", "vision_config"))):
        qc = getattr(cfg, "quantization_config", None) if cfg is not None else None
        if qc is None:
            continue
        m = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
        if str(getattr(m, "value", m)) == "gguf":
            delattr(cfg, "quantization_config")
    if hasattr(model, "is_quantized") and not isinstance(type(model).__dict__.get("is_quantized"), property):
        import contextlib

        with contextlib.suppress(AttributeError):
            model.is_quantized = False
