"""Bounded text for error messages: a value is never printed in full when it is huge."""

from __future__ import annotations

import reprlib
from typing import Any

LIMIT = 300


def cut(text: str, limit: int = LIMIT) -> str:
    """``text`` cut to about ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def cut_middle(text: str, limit: int = 2000) -> str:
    """``text`` of at most about ``limit`` characters, keeping its start and its end (an error's fix is at the end)."""
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 3
    return f"{text[:head]} ... ({len(text) - head - tail:,} characters left out) ... {text[-tail:]}"


_REPR = reprlib.Repr()
_REPR.maxlevel = 4
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 8
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = LIMIT


def short(value: Any, limit: int = LIMIT) -> str:
    """A bounded repr of ``value`` (time and size bounded even for deeply nested or shared structures)."""
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a repr that fails must not hide the real error
        text = f"<{type(value).__name__}>"
    return cut(text, limit)
