"""Stage configuration helpers.

Each stage keeps its own dataclass next to its code (e.g. ``presel.selection.select.SelectConfig``),
validated in ``__post_init__``. These helpers turn one into a dict, build one from a dict or YAML
with clear errors for unknown keys, and describe the environment saved with every output.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import sys
from pathlib import Path
from typing import Any, TypeVar

from presel.errors import PreselError

T = TypeVar("T")

_VERSIONED = ("presel", "numpy", "pyarrow", "faiss-cpu", "faiss-gpu", "scikit-learn", "torch", "transformers",
              "peft", "accelerate", "onnxruntime", "ray")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (paths as strings, tuples as lists)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def from_dict(cls: type[T], data: dict[str, Any] | None, *, source: str = "config") -> T:
    """Build ``cls`` from ``data``; unknown keys are an error that lists the known ones."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise PreselError(f"{source}: unknown setting(s) {', '.join(unknown)} for {cls.__name__}; "
                          f"known: {', '.join(sorted(names))}")
    try:
        return cls(**data)
    except TypeError as e:
        raise PreselError(f"{source}: {e}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PreselError(f"{p}: config file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise PreselError(f"{p}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PreselError(f"{p}: a config must be a YAML mapping")
    return data


def package_versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def environment() -> dict[str, Any]:
    """What produced an output: versions and platform (no hostnames, no timestamps, so outputs stay reproducible)."""
    return {"python": sys.version.split()[0], "platform": platform.system().lower(), "packages": package_versions()}


def resolved_config(stage: str, cfg: Any, **extra: Any) -> dict[str, Any]:
    """The ``config.json`` written with every stage output."""
    out = {"stage": stage, "config": to_dict(cfg), "environment": environment()}
    out.update(extra)
    return out
