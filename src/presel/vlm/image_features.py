"""Frozen vision tower outputs, computed once per image and reused by every fine-tune and evaluation.

When the vision tower is frozen (the paper's recipe), what a LLaVA-style model computes from an image before
its trained projector never changes: ``vision_tower -> feature layer -> select strategy``. :class:`ImageFeatures`
computes that tensor (the projector's input, captured by a hook while the model's own ``get_image_features``
runs, so the feature layer and select strategy are the model's) once per image and serves it from memory and
from an on-disk cache; :meth:`ImageFeatures.embed` then builds ``inputs_embeds`` exactly as the model's forward
does (token embeddings, projected image features scattered over the image tokens).

Cache layout: ``<cache_dir>/<vision key>/<image sha256>.npy`` (float32, written atomically). The vision key
hashes the vision tower's weights, the projector-input recipe (feature layer, select strategy) and the image
processor's settings; the image key is the sha256 of the image file's bytes. So a cached tensor is reused only
for the same frozen tower, the same preprocessing and the same image content, whatever the file is called.

Supported: models whose image features are ``projector(f(vision_tower(pixel_values)))`` with one fixed-size
block of image tokens per image (``LlavaForConditionalGeneration``: llava-hf LLaVA-1.5, the demo's
``llava-small``). :func:`supports` says whether a model is one; the others run their vision tower on the fly.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from presel.errors import PreselError
from presel.io.digest import file_sha256

SUPPORTED_MODEL_TYPES = ("llava",)


def _base(model: Any) -> Any:
    """The underlying transformers model of a (PEFT-wrapped) model."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def supports(model: Any) -> bool:
    """Whether ``model``'s image features can be cached (LLaVA-style, fixed image token count)."""
    base = _base(model)
    cfg = getattr(base, "config", None)
    return (getattr(cfg, "model_type", None) in SUPPORTED_MODEL_TYPES and hasattr(base, "get_image_features")
            and getattr(cfg, "image_token_id", None) is not None and _projector(base) is not None)


def _projector(base: Any) -> Any:
    from presel.vlm.parts import find_parts

    parts = find_parts(base)
    return base.get_submodule(parts.projector) if parts.projector else None


def vision_key(model: Any, processor: Any) -> str:
    """Hash of what turns an image into the projector's input: vision weights, feature recipe, preprocessing."""
    import torch

    base = _base(model)
    from presel.vlm.parts import find_parts

    parts = find_parts(base)
    h = hashlib.sha256()
    tower = base.get_submodule(parts.vision)
    for name, t in sorted(tower.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    cfg = base.config
    recipe = {"layer": getattr(cfg, "vision_feature_layer", None),
              "strategy": getattr(cfg, "vision_feature_select_strategy", None),
              "image_processor": _jsonable(getattr(processor, "image_processor", None))}
    h.update(json.dumps(recipe, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _jsonable(obj: Any) -> Any:
    if obj is None:
        return None
    to_dict = getattr(obj, "to_dict", None)
    d = to_dict() if callable(to_dict) else vars(obj)
    return {k: v for k, v in d.items() if not k.startswith("_")}


class _Captured(Exception):
    """Raised by the projector hook once the projector's input is captured."""


class ImageFeatures:
    """Projector inputs of images for one (frozen) vision tower: memory + optional disk cache.

    ``model``: the VLM (a PEFT wrapper is fine); ``processor``: its processor; ``cache_dir``: where the
    ``<vision key>/`` folder lives (None: memory only). ``batch_size``: images per vision forward.
    """

    def __init__(self, model: Any, processor: Any, cache_dir: str | os.PathLike | None = None, *,
                 batch_size: int = 32):
        if not supports(model):
            raise PreselError(f"{type(_base(model)).__name__}: image features can be cached only for LLaVA-style "
                              "models (a fixed block of image tokens from projector(vision tower)); run without the cache")
        self.model = model
        self.processor = processor
        self.key = vision_key(model, processor)
        self.dir = Path(cache_dir) / self.key if cache_dir is not None else None
        self.batch_size = max(1, int(batch_size))
        self.image_token_id = int(_base(model).config.image_token_id)
        self._mem: dict[str, Any] = {}
        self._sha: dict[tuple[str, int, int], str] = {}
        self.computed = 0  # images run through the vision tower by this object
        self.loaded = 0  # images read from the disk cache

    # -- keys
    def image_key(self, path: str | os.PathLike) -> str:
        """sha256 of the image's bytes (a local file, or any locator :mod:`presel.io.sources` reads)."""
        from presel.io.sources import is_url, read_bytes, split_ref

        loc = os.fspath(path)
        kind, container, _ = split_ref(loc)
        if kind is not None or is_url(container):
            return hashlib.sha256(read_bytes(loc)).hexdigest()
        st = os.stat(loc)
        k = (loc, st.st_size, st.st_mtime_ns)
        if k not in self._sha:
            self._sha[k] = file_sha256(loc)
        return self._sha[k]

    # -- features
    def get(self, paths: Sequence[str | os.PathLike]) -> Any:
        """``N x T x D`` float32 tensor: the projector input of each image, in order (computed when missing)."""
        import torch

        keys = [self.image_key(p) for p in paths]
        self.ensure_keys(list(zip(keys, paths)))
        return torch.stack([self._mem[k] for k in keys])

    def ensure(self, paths: Sequence[str | os.PathLike]) -> list[str]:
        """Make sure the features of ``paths`` are available; return their keys."""
        keys = [self.image_key(p) for p in paths]
        self.ensure_keys(list(zip(keys, paths)))
        return keys

    def ensure_keys(self, items: Sequence[tuple[str, str | os.PathLike]]) -> None:
        import numpy as np
        import torch

        todo: dict[str, str | os.PathLike] = {}
        for k, p in items:
            if k in self._mem or k in todo:
                continue
            f = self.dir / f"{k}.npy" if self.dir is not None else None
            x = None
            if f is not None and f.is_file():
                try:
                    x = np.load(f)
                except (OSError, ValueError):  # a damaged cache file: computed again and replaced
                    x = None
            if x is not None and x.ndim == 2:
                self._mem[k] = torch.from_numpy(x)
                self.loaded += 1
            else:
                todo[k] = p
        pending = list(todo.items())
        for i in range(0, len(pending), self.batch_size):
            chunk = pending[i:i + self.batch_size]
            feats = self.compute([p for _, p in chunk])
            for (k, _), x in zip(chunk, feats):
                self._mem[k] = x
                if self.dir is not None:
                    self._save(k, x)

    def feature(self, key: str) -> Any:
        return self._mem[key]

    def _save(self, key: str, x: Any) -> None:
        import tempfile

        import numpy as np

        assert self.dir is not None
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".npy.tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, x.numpy())
            os.replace(tmp, self.dir / f"{key}.npy")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def compute(self, paths: Sequence[str | os.PathLike]) -> list[Any]:
        """Run the vision tower on ``paths`` (one batch); the projector's input of each image (float32, CPU)."""
        import torch

        from presel.io.sources import load_image

        base = _base(self.model)
        images = [load_image(os.fspath(p)) for p in paths]
        pv = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        param = next(base.parameters())
        pv = pv.to(param.device, dtype=param.dtype if param.dtype.is_floating_point else None)
        captured: list[Any] = []

        def stop(_m: Any, args: Any) -> None:  # the projector's input is all we need: stop there
            captured.append(args[0].detach())
            raise _Captured

        hook = _projector(base).register_forward_pre_hook(stop)
        was_training = base.training
        base.eval()  # the frozen tower's output, without dropout
        try:
            with torch.inference_mode():
                base.get_image_features(pixel_values=pv)
        except _Captured:
            pass
        finally:
            hook.remove()
            base.train(was_training)
        if not captured:
            raise PreselError(f"{type(base).__name__}: its image features did not pass through the projector; "
                              "run without the image feature cache")
        self.computed += len(paths)
        out = captured[0].float().cpu()
        return [out[i].clone() for i in range(out.shape[0])]

    # -- model inputs
    def embed(self, model: Any, input_ids: Any, features: Any) -> Any:
        """``inputs_embeds`` for ``input_ids`` with ``features`` (``n_images x T x D``, one image per row of
        ``input_ids`` that has image tokens, in order) projected by the model's (trained) projector and placed
        over the image tokens, as the model's own forward places them."""
        base = _base(model)
        emb = model.get_input_embeddings()(input_ids)
        proj = _projector(base)
        w = next(proj.parameters())
        img = proj(features.to(w.device, w.dtype if w.dtype.is_floating_point else None))
        img = img.reshape(-1, img.shape[-1]).to(emb.device, emb.dtype)
        mask = (input_ids == self.image_token_id).unsqueeze(-1)
        n_tok = int(mask.sum())
        if n_tok != img.shape[0]:
            raise PreselError(f"{n_tok} image tokens in the batch but {img.shape[0]} image feature vectors; "
                              "the cached features do not fit this model's image token count")
        return emb.masked_scatter(mask.expand_as(emb), img)


class CachedFeatureDataset:
    """Wraps a training dataset (items -> :class:`presel.vlm.render.Encoded`, attributes ``samples`` and
    ``pool``): each sample's ``pixel_values`` are replaced by its cached ``image_features`` (1 x T x D)."""

    def __init__(self, inner: Any, features: ImageFeatures):
        self.inner = inner
        pool = inner.pool
        self.keys = features.ensure([pool.locator(rec) for rec in inner.samples])
        self.table = {k: features.feature(k) for k in set(self.keys)}  # tensors only: picklable for workers

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, item: tuple[int, bool]) -> Any:
        enc = self.inner[item]
        extras = {k: v for k, v in enc.extras.items() if k != "pixel_values"}
        extras["image_features"] = self.table[self.keys[item[0]]].unsqueeze(0)
        enc.extras = extras
        return enc
