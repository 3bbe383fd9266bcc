"""What a backend is, without loading one: :class:`BackendSpec` and the :class:`Backend` protocol (a leaf module:
the backend modules and the package import it, it imports neither)."""

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
