"""Safe image loading and model preprocessing (PIL + numpy; no torchvision).

``load_rgb`` turns any usable image into an 8-bit RGB PIL image and raises ``ImageRejected`` (with a
short reason) for the rest: missing, zero-byte, truncated, not an image, decompression bomb. Grayscale,
CMYK, palette, alpha (composited on white) and 16-bit images are converted.

``Preprocess`` reproduces the Hugging Face image processors' resize / centre-crop geometry (BiT/DINOv2,
CLIP: shortest edge then centre crop; SigLIP: exact size) and returns uint8 HxWx3 arrays; the float
normalisation runs batched on the model's device (4x less data through worker queues and PCIe).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
HASH_CHUNK = 1 << 20


class ImageRejected(Exception):
    """An image that cannot be used; ``reason`` is a short machine-friendly text."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _open_file(path: str | os.PathLike) -> Any:
    """``path`` opened for reading as a regular file only (a FIFO would block); ImageRejected with the reason
    when it cannot be."""
    from presel.io.paths import open_regular

    try:
        return open_regular(path)
    except FileNotFoundError:
        raise ImageRejected("missing: file not found") from None
    except IsADirectoryError:
        raise ImageRejected("not a file: is a directory") from None
    except ValueError:
        raise ImageRejected("bad path: the path holds a NUL byte") from None
    except OSError as e:
        raise ImageRejected(_os_reason(e)) from None


def hash_file(path: str | os.PathLike) -> str:
    """blake2b-128 hex digest of the file bytes; ImageRejected for missing/empty/unreadable files."""
    h = hashlib.blake2b(digest_size=16)
    n = 0
    try:
        with _open_file(path) as f:
            while True:
                chunk = f.read(HASH_CHUNK)
                if not chunk:
                    break
                n += len(chunk)
                h.update(chunk)
    except OSError as e:
        raise ImageRejected(_os_reason(e)) from None
    if n == 0:
        raise ImageRejected("zero-byte: the file is empty")
    return h.hexdigest()


def _os_reason(e: OSError) -> str:
    from presel.io.paths import NotRegularFile

    if isinstance(e, NotRegularFile):
        return "not a file: is a directory" if e.kind == "a directory" else f"not a file: {e.kind}, not a regular file"
    return f"unreadable: {e.strerror or e}"


def _to_rgb(img: Any) -> Any:
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img)
        a = a.astype(np.float64)
        a = np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)  # 16-bit -> 8-bit
        return Image.fromarray(a, mode="L").convert("RGB")
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        finite = a[np.isfinite(a)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        a = np.clip(np.nan_to_num(a * scale), 0, 255).round().astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("PA",):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_rgb(path: str | os.PathLike | Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    """Decode ``path`` (or an in-memory file such as ``io.BytesIO``) into an 8-bit RGB PIL image (EXIF orientation applied), or raise ImageRejected."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not hasattr(path, "read"):  # a path: opened as a regular file only (a FIFO would block)
        with _open_file(path) as f:
            return load_rgb(f, max_pixels=max_pixels)
    p = path
    try:
        if hasattr(p, "getbuffer"):
            size = len(p.getbuffer())
        else:
            size = os.fstat(p.fileno()).st_size
    except OSError as e:
        raise ImageRejected(f"unreadable: {e.strerror or e}") from None
    if size == 0:
        raise ImageRejected("zero-byte: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                if w <= 0 or h <= 0:
                    raise ImageRejected(f"empty image {w}x{h}")
                if w * h > max_pixels:
                    raise ImageRejected(f"decompression bomb: {w}x{h} = {w * h} pixels > limit {max_pixels}")
                img.seek(0)
                img.load()
                img = ImageOps.exif_transpose(img) or img
                out = _to_rgb(img)
                out.load()
                return out
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("not an image: format not recognised") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected(f"decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct_error()) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            return_reason = f"truncated: {msg}"
        else:
            return_reason = f"corrupt: {msg}"
        raise ImageRejected(return_reason) from None
    except MemoryError:
        raise ImageRejected("too large to decode (out of memory)") from None


def struct_error() -> type[Exception]:
    import struct

    return struct.error


@dataclass(frozen=True)
class Preprocess:
    """Resize + centre-crop geometry and normalisation constants of an image processor."""

    resize_mode: str = "shortest_edge"  # "shortest_edge" | "exact" | "none"
    resize: tuple[int, int] | int = 256  # shortest edge (int) or (height, width)
    crop: tuple[int, int] | None = (224, 224)
    resample: int = 3  # PIL: 2 bilinear, 3 bicubic
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    rescale: float = 1 / 255

    @property
    def out_size(self) -> tuple[int, int]:
        if self.crop is not None:
            return self.crop
        if self.resize_mode == "exact":
            return self.resize  # type: ignore[return-value]
        raise ValueError("output size varies with the input; set a crop size")

    @classmethod
    def from_processor_dict(cls, d: dict[str, Any], image_size: int | None = None, source: str = "model") -> Preprocess:
        """From an image processor's ``to_dict()`` / preprocessor_config.json; ``image_size`` overrides the output size."""
        from presel.errors import PreselError

        size = d.get("size") or {}
        if isinstance(size, int):
            size = {"shortest_edge": size}
        do_resize = d.get("do_resize", True)
        if not do_resize:
            mode, resize = "none", 0
        elif size.get("shortest_edge"):
            mode, resize = "shortest_edge", int(size["shortest_edge"])
        elif size.get("height") and size.get("width"):
            mode, resize = "exact", (int(size["height"]), int(size["width"]))
        else:
            raise PreselError(f"{source}: image processor size {size} is not supported (need shortest_edge or "
                              "height/width)")
        crop = None
        if d.get("do_center_crop", False):
            cs = d.get("crop_size") or {}
            if isinstance(cs, int):
                cs = {"height": cs, "width": cs}
            crop = (int(cs["height"]), int(cs["width"]))
        mean = tuple(float(x) for x in (d.get("image_mean") or (0.5, 0.5, 0.5)))
        std = tuple(float(x) for x in (d.get("image_std") or (0.5, 0.5, 0.5)))
        if not d.get("do_normalize", True):
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        rescale = float(d.get("rescale_factor", 1 / 255)) if d.get("do_rescale", True) else 1.0
        resample = int(d.get("resample", 3) if d.get("resample") is not None else 3)
        pre = cls(mode, resize, crop, resample, mean, std, rescale)  # type: ignore[arg-type]
        if crop is None and mode != "exact" and image_size is None:
            raise PreselError(f"{source}: image processor has no fixed output size (no centre crop, no exact resize); "
                              "pass --image-size")
        return pre.with_image_size(image_size) if image_size else pre

    def with_image_size(self, s: int) -> Preprocess:
        """Same geometry at output size ``s`` x ``s`` (shortest-edge resize scaled by the same crop ratio)."""
        if self.resize_mode == "shortest_edge":
            ratio = self.resize / (self.crop[0] if self.crop else self.resize)  # type: ignore[operator]
            return Preprocess("shortest_edge", int(round(s * ratio)), (s, s), self.resample, self.mean, self.std,
                              self.rescale)
        if self.resize_mode == "exact":
            return Preprocess("exact", (s, s), (s, s) if self.crop else None, self.resample, self.mean, self.std,
                              self.rescale)
        return Preprocess("none", 0, (s, s), self.resample, self.mean, self.std, self.rescale)

    def __call__(self, img: Any) -> np.ndarray:
        """PIL RGB image -> uint8 array H x W x 3 (resized, centre-cropped; not normalised)."""
        from PIL import Image

        if self.resize_mode == "shortest_edge":
            w, h = img.size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = int(self.resize), int(int(self.resize) * long / short)
            nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), resample=Image.Resampling(self.resample))
        elif self.resize_mode == "exact":
            rh, rw = self.resize  # type: ignore[misc]
            if (rw, rh) != img.size:
                img = img.resize((rw, rh), resample=Image.Resampling(self.resample))
        a = np.asarray(img, dtype=np.uint8)
        if self.crop is not None:
            a = center_crop(a, self.crop)
        return np.ascontiguousarray(a)

    def normalize_numpy(self, batch: np.ndarray) -> np.ndarray:
        """uint8 N x H x W x 3 -> float32 N x 3 x H x W, rescaled and normalised."""
        x = batch.astype(np.float32) * np.float32(self.rescale)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def center_crop(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop as transformers does (top = (H - h) // 2), zero-padding an image smaller than the crop."""
    ch, cw = size
    h, w = a.shape[:2]
    if h < ch or w < cw:
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        a = np.pad(a, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
        h, w = a.shape[:2]
    top, left = (h - ch) // 2, (w - cw) // 2
    return a[top:top + ch, left:left + cw]
