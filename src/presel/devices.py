"""One dtype vocabulary and one device resolver for every stage that runs a model.

``DTYPES`` maps each accepted compute-dtype name to its torch attribute; ``auto`` (bf16 on CUDA, fp32 elsewhere)
is accepted everywhere on top. A stage may accept fewer names (fine-tuning has no fp16: it would need loss
scaling), derived from this table with :func:`dtype_choices`. torch is imported only inside the functions.
"""

from __future__ import annotations

from typing import Any

from presel.errors import PreselError

# name -> torch attribute; the short names are the ones flags and YAML examples use
DTYPES: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16",
                          "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
SHORT_DTYPES: tuple[str, ...] = ("fp32", "bf16", "fp16")


def dtype_choices(*, exclude: tuple[str, ...] = ()) -> tuple[str, ...]:
    """``auto`` and the short dtype names, without ``exclude``: the values a ``--dtype`` flag offers."""
    return ("auto", *(d for d in SHORT_DTYPES if d not in exclude))


def short_dtype(name: str) -> str:
    """``bfloat16`` -> ``bf16``; a short name or ``auto`` unchanged."""
    if name == "auto" or name in SHORT_DTYPES:
        return name
    if name not in DTYPES:
        raise PreselError(f"dtype={name!r} must be one of auto, {', '.join(sorted(DTYPES))}")
    return {v: k for k, v in DTYPES.items() if k in SHORT_DTYPES}[DTYPES[name]]


def resolve_device(device: str = "auto", *, rank: int | None = None) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; with ``rank`` (a distributed local rank) ``auto``
    and ``cuda`` become ``cuda:RANK``. A CUDA device without CUDA is an error; anything else is returned unchanged."""
    import torch

    if device == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        device = "cuda"
    if device == "cuda" and rank is not None:
        return f"cuda:{rank}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PreselError(f"device={device!r} but CUDA is not available here; use --device cpu or auto")
    return device


def resolve_dtype_name(dtype: str, device: str) -> str:
    """The short dtype name to compute in: ``auto`` is bf16 on a CUDA device (unless the visible GPU lacks bf16),
    else fp32."""
    if dtype != "auto":
        return short_dtype(dtype)
    if not str(device).startswith("cuda"):
        return "fp32"
    import torch

    return "fp32" if torch.cuda.is_available() and not torch.cuda.is_bf16_supported() else "bf16"


def torch_dtype(name: str) -> Any:
    """The torch dtype of an accepted name (``fp32``, ``bfloat16``, ...)."""
    import torch

    if name not in DTYPES:
        raise PreselError(f"dtype={name!r} must be one of auto, {', '.join(sorted(DTYPES))}")
    return getattr(torch, DTYPES[name])


def resolve_dtype(dtype: str, device: str) -> Any:
    """A torch dtype from ``auto`` (bf16 on CUDA, fp32 elsewhere) or any name of :data:`DTYPES`."""
    return torch_dtype(resolve_dtype_name(dtype, device))
