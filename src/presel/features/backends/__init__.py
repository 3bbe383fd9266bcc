"""Embedding backends: Hugging Face transformers (``hf``) and onnxruntime (``onnx``).

A ``BackendSpec`` is a small picklable description (sent to Ray actors); ``preprocess_for(spec)`` gives
the image geometry without loading the model (the decode workers need it); ``load_backend(spec)``
loads the model where it runs. A backend's ``embed(batch)`` takes uint8 N x H x W x 3 (numpy or a
torch tensor) and returns float32 N x d.
"""

from __future__ import annotations

from presel.features.backends.spec import BACKENDS, POOLINGS, Backend, BackendSpec
from presel.features.images import Preprocess

__all__ = ["BACKENDS", "POOLINGS", "Backend", "BackendSpec", "load_backend", "preprocess_for"]


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
