"""Input tokens of one image, per model family, for cost estimates (before any request is sent).

The rules are the ones the providers document:

* OpenAI tile models (gpt-4o, gpt-4.1, gpt-4.5, o1, o3, ...): ``detail=low`` costs the base tokens;
  otherwise the image is scaled to fit 2048x2048, then its shortest side to 768 px, and each 512-px tile
  costs the tile tokens on top of the base: gpt-4o / gpt-4.1 / gpt-4.5 85 + 170 per tile, gpt-4o-mini
  2833 + 5667 per tile (the same price as gpt-4o at its lower per-token rate), o1 / o3 75 + 150.
* OpenAI patch models (gpt-4.1-mini, gpt-4.1-nano, o4-mini, gpt-5-mini, gpt-5-nano): one token per
  32x32 patch, at most 1536 patches (larger images are scaled down to fit), times a per-model multiplier
  (1.62, 2.46, 1.72, 1.62, 2.46).
* Claude: about ``width x height / 750`` tokens after the image is scaled to at most 1568 px on its long
  side and about 1.15 megapixels.
* Gemini 2.x: 258 tokens when both sides are <= 384 px; larger images are cut into square tiles (side
  ``min(w, h) / 1.5``, kept within 256..768 px) of 258 tokens each.
* Qwen2-VL / Qwen2.5-VL (vLLM and other local servers): one token per 28x28 patch after the processor's
  resize (dimensions rounded to multiples of 28, pixels kept between ``min_pixels`` 56x56 and
  ``max_pixels`` 1280x28x28, the setting vLLM examples use).

``detail=auto`` lets OpenAI choose; the estimate counts it as ``high`` (an upper bound).
"""

from __future__ import annotations

import math
import re

from presel.errors import PreselError

RULES = ("auto", "gpt-4o", "gpt-4o-mini", "o-series", "patch32", "claude", "gemini", "qwen2vl", "openai")
DETAILS = ("auto", "low", "high")

_TILE = {"gpt-4o": (85, 170), "gpt-4o-mini": (2833, 5667), "o-series": (75, 150)}
_PATCH_MULT = (("gpt-4.1-mini", 1.62), ("gpt-4.1-nano", 2.46), ("o4-mini", 1.72), ("gpt-5-mini", 1.62),
               ("gpt-5-nano", 2.46))


def rule_for_model(model: str | None) -> tuple[str, float]:
    """(rule, multiplier) for a model name; unknown names fall back to the Qwen2-VL rule for local models
    and the gpt-4o rule otherwise."""
    m = (model or "").lower().rsplit("/", 1)[-1]
    for name, mult in _PATCH_MULT:
        if m.startswith(name):
            return "patch32", mult
    if m.startswith("gpt-4o-mini"):
        return "gpt-4o-mini", 1.0
    if re.match(r"o[13](-|$)", m):
        return "o-series", 1.0
    if m.startswith(("gpt-", "chatgpt")):
        return "gpt-4o", 1.0
    if "qwen" in m:
        return "qwen2vl", 1.0
    if m.startswith("claude"):
        return "claude", 1.0
    if m.startswith("gemini"):
        return "gemini", 1.0
    return "gpt-4o", 1.0


def tile_tokens(w: int, h: int, base: int, tile: int, detail: str = "auto") -> int:
    if detail == "low":
        return base
    s = min(1.0, 2048 / max(w, h))
    w2, h2 = w * s, h * s
    s = min(1.0, 768 / min(w2, h2))
    w2, h2 = w2 * s, h2 * s
    return base + tile * math.ceil(w2 / 512) * math.ceil(h2 / 512)


def patch32_tokens(w: int, h: int, multiplier: float = 1.0, cap: int = 1536) -> int:
    patches = math.ceil(w / 32) * math.ceil(h / 32)
    if patches > cap:
        r = math.sqrt(32 * 32 * cap / (w * h))
        r *= min(math.floor(w * r / 32) / (w * r / 32), math.floor(h * r / 32) / (h * r / 32))
        patches = min(cap, math.ceil(w * r / 32) * math.ceil(h * r / 32))
    return math.ceil(patches * multiplier)


def qwen2vl_tokens(w: int, h: int, min_pixels: int = 56 * 56, max_pixels: int = 1280 * 28 * 28) -> int:
    f = 28
    hb, wb = max(f, round(h / f) * f), max(f, round(w / f) * f)
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb, wb = max(f, math.floor(h / beta / f) * f), max(f, math.floor(w / beta / f) * f)
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / f) * f, math.ceil(w * beta / f) * f
    return (hb // f) * (wb // f)


def claude_tokens(w: int, h: int) -> int:
    s = min(1.0, 1568 / max(w, h), math.sqrt(1_150_000 / (w * h)))
    return math.ceil(round(w * s) * round(h * s) / 750)


def gemini_tokens(w: int, h: int) -> int:
    if w <= 384 and h <= 384:
        return 258
    unit = min(768, max(256, min(w, h) / 1.5))
    return 258 * math.ceil(w / unit) * math.ceil(h / unit)


def image_tokens(w: int, h: int, *, rule: str = "auto", model: str | None = None, detail: str = "auto") -> int:
    """Tokens of a ``w`` x ``h`` image under ``rule`` (``auto``: from ``model``)."""
    if rule not in RULES:
        raise PreselError(f"image_token_rule={rule!r} must be one of {', '.join(RULES)}")
    if detail not in DETAILS:
        raise PreselError(f"image_detail={detail!r} must be one of {', '.join(DETAILS)}")
    mult = 1.0
    if rule == "auto":
        rule, mult = rule_for_model(model)
    elif rule == "patch32":
        mult = rule_for_model(model)[1] if rule_for_model(model)[0] == "patch32" else 1.0
    if rule == "openai":
        rule = "gpt-4o"
    if rule == "qwen2vl":
        return qwen2vl_tokens(w, h)
    if rule == "claude":
        return claude_tokens(w, h)
    if rule == "gemini":
        return gemini_tokens(w, h)
    if rule == "patch32":
        return patch32_tokens(w, h, mult)
    base, tile = _TILE[rule]
    return tile_tokens(w, h, base, tile, detail)


def resolved_rule(rule: str, model: str | None) -> str:
    return rule_for_model(model)[0] if rule == "auto" else ("gpt-4o" if rule == "openai" else rule)

