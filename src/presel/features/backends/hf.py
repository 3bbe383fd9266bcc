"""Hugging Face transformers backend: ``AutoModel`` (hub id or local dir) + the model's image processor config.

DINOv2 of any size by default ([CLS] of ``last_hidden_state``, as the official PreSel/DINOv2 code), and
vision towers of CLIP/SigLIP-style models (``model.vision_model``) with ``--pooling cls|mean|pooler``.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import numpy as np

from presel.devices import torch_dtype
from presel.errors import PreselError
from presel.features.backends.spec import BackendSpec
from presel.features.images import Preprocess

NO_CLS_MODEL_TYPES = {"siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model"}


def processor_dict(model: str) -> dict[str, Any]:
    """The model's preprocessor_config.json (local dir or hub cache)."""
    from transformers.utils import cached_file

    try:
        path = cached_file(model, "preprocessor_config.json")
    except OSError as e:
        raise PreselError(f"{model}: no image processor config (preprocessor_config.json) found ({e}); "
                          "save the model's image processor next to it (processor.save_pretrained(dir))") from None
    if path is None:
        raise PreselError(f"{model}: no preprocessor_config.json; save the model's image processor next to it")
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    return d.get("image_processor", d) if isinstance(d, dict) else d


def hf_preprocess(spec: BackendSpec) -> Preprocess:
    return Preprocess.from_processor_dict(processor_dict(spec.model), spec.image_size, source=spec.model)


class HFBackend:
    def __init__(self, spec: BackendSpec):
        import torch
        from transformers import AutoModel

        self.spec = spec
        self.preprocess = hf_preprocess(spec)
        if spec.threads and spec.device == "cpu":
            torch.set_num_threads(spec.threads)
        dtype = torch_dtype(spec.dtype)
        try:
            model = AutoModel.from_pretrained(spec.model, dtype=dtype)
        except OSError as e:
            raise PreselError(f"--model {spec.model}: cannot load ({e}); pass a local model directory, a hub id "
                              "available offline, or 'dinov2-small'") from None
        if hasattr(model, "vision_model") and not hasattr(model, "embeddings"):
            model = model.vision_model  # CLIP / SigLIP: keep the vision tower only
        self.model = model.eval().to(spec.device)
        cfg = getattr(model, "config", None)
        mtype = getattr(cfg, "model_type", "")
        self.has_cls = mtype not in NO_CLS_MODEL_TYPES
        self.n_prefix = (1 + int(getattr(cfg, "num_register_tokens", 0) or 0)) if self.has_cls else 0
        if spec.pooling == "cls" and not self.has_cls:
            raise PreselError(f"--model {spec.model}: {mtype} has no [CLS] token; use --pooling pooler or mean")
        self.kwargs: dict[str, Any] = {}
        params = inspect.signature(self.model.forward).parameters
        native = getattr(cfg, "image_size", None)
        if "interpolate_pos_encoding" in params and native and self.preprocess.out_size != (native, native):
            self.kwargs["interpolate_pos_encoding"] = True
        self.device = torch.device(spec.device)
        self.dtype = dtype
        mean = torch.tensor(self.preprocess.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        # x * rescale - mean) / std  ==  x * a + b
        self._a = (self.preprocess.rescale / std)
        self._b = (-mean / std)
        self._cuda = self.device.type == "cuda"

    def pixel_values(self, batch: Any):
        """uint8 N x H x W x 3 -> normalised N x 3 x H x W on the model's device and dtype."""
        import torch

        x = torch.as_tensor(batch)
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = x * self._a + self._b
        x = x.to(self.dtype)
        if self._cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward_pixels(self, x) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(pixel_values=x, **self.kwargs)
            if self.spec.pooling == "cls":
                v = out.last_hidden_state[:, 0]
            elif self.spec.pooling == "mean":
                v = out.last_hidden_state[:, self.n_prefix:].float().mean(dim=1)
            else:
                v = getattr(out, "pooler_output", None)
                if v is None:
                    raise PreselError(f"--model {self.spec.model}: no pooler_output; use --pooling cls or mean")
            return v.float().cpu().numpy()

    def embed(self, batch: Any) -> np.ndarray:
        return self.forward_pixels(self.pixel_values(batch))
