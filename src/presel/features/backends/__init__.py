"""Embedding backends: Hugging Face transformers (``hf``) and onnxruntime (``onnx``).

A ``BackendSpec`` is a small picklable description (sent to Ray actors); ``preprocess_for(spec)`` gives
the image geometry without loading the model (the decode workers need it); ``load_backend(spec)``
loads the model where it runs. A backend's ``embed(batch)`` takes uint8 N x H x W x 3 (numpy or a
torch tensor) and returns float32 N x d.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from presel.features.images import Preprocess

BACKENDS = ("hf", "onnx")
POOLINGS = ("cls", "mean", "pooler")


@dataclass(frozen=True)
class BackendSpec:
    backend: str  # "hf" | "onnx"
    model: str  # hub id, model directory, or .onnx file (offline names already resolved)
    pooling: str = "cls"
    dtype: str = "fp32"  # "fp32" | "bf16" | "fp16" (resolved, not "auto")
    device: str = "cpu"
    image_size: int | None = None
    onnx_output: str | None = None
    threads: int | None = None  # intra-op threads on CPU (None: library default)


class Backend(Protocol):
    preprocess: Preprocess

    def embed(self, batch: Any) -> np.ndarray: ...


def preprocess_for(spec: BackendSpec) -> Preprocess:
    if spec.backend == "hf":
        from presel.features.backends.hf import hf_preprocess

        return hf_preprocess(spec)
    from presel.features.backends.onnx import onnx_preprocess

    return onnx_preprocess(spec)


def load_backend(spec: BackendSpec) -> Backend:
    if spec.backend == "hf":
        from presel.features.backends.hf import HFBackend

        return HFBackend(spec)
    from presel.features.backends.onnx import OnnxBackend

    return OnnxBackend(spec)
