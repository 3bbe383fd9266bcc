"""Valid and invalid values for any field of a presel config dataclass, derived from its annotation, so tests that
walk every field pick up fields added later without an entry here."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from presel.config import from_dict
from presel.errors import PreselError

# strings tried in turn for a str field: the first one the dataclass accepts (and that differs) is the alternative
STRINGS = ("sharegpt", "fp32", "cpu", "mean", "onnx", "float32", "ray", "task", "official", "llava-v1", "size",
           "uniform", "sklearn", "random", "typiclust", "low", "max_completion_tokens", "url", "path", "vllm", "batch-file",
           "gpt-4o", "constant", "48h", "OTHER_KEY", "http://127.0.0.1:9/v1", "other-model", "id", "image")
# base settings a class needs before one field can be varied (exactly-one-of pairs)
BASE: dict[str, dict[str, Any]] = {"SelectConfig": {"budget": 0.5}, "OracleConfig": {"annotations": "a.json"}}


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _candidates(hint: Any, default: Any) -> list[Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return [c for a in args if a is not type(None) for c in _candidates(a, default)] + [None]
    if origin is typing.Literal:
        return list(args)
    if hint is bool:
        return [not default if isinstance(default, bool) else True, False]
    if hint is int:
        d = default if isinstance(default, int) and not isinstance(default, bool) else 1
        return [d + 1, d * 2, 1, 2, 3, 8, 14, 16, 64, 1024, 2048, 100_000]
    if hint is float:
        d = float(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else 0.5
        return [d * 0.5, d + 1.0, 0.5, 0.25, 0.9, 1.5, 2.0, 10.0]
    if hint is str:
        return list(STRINGS)
    if origin in (list, tuple) or hint in (list, tuple):
        return [["a.jsonl"], ("q_proj",)]
    if origin is dict or hint is dict:
        return [{"top_p": 0.5}]
    return []


def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def alternative(cls: type, name: str) -> dict[str, Any]:
    """A valid section for ``cls`` that differs from ``BASE`` in ``name`` only (or in ``name`` and a base key it
    excludes); raises AssertionError when no candidate value is accepted."""
    f = next(x for x in dataclasses.fields(cls) if x.name == name)
    default = default_of(f)
    base = BASE.get(cls.__name__, {})
    for value in _candidates(hints(cls)[name], default):
        if value == default and not (value is None and name in base):
            continue
        for section in ({**base, name: value}, {**{k: None for k in base}, name: value}):
            try:
                from_dict(cls, section)
            except PreselError:
                continue
            return section
    raise AssertionError(f"no valid alternative value found for {cls.__name__}.{name}: add one to tests/_support/configs.py")


# values of the wrong type or out of range for a field of this annotation
def invalid_values(hint: Any) -> list[Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return [v for a in inner for v in invalid_values(a) if v is not None]
    if hint is bool:
        return ["yes", 2]
    if hint is int:
        return ["1x", -(10**9), 0, 1.5]
    if hint is float:
        return ["fast", -1e9, 0.0, 1e9]
    if hint is str:
        return ["\x00no such value\x00", 7]
    if origin in (list, tuple) or hint in (list, tuple):
        return [7, [7]]
    if origin is dict or hint is dict:
        return ["top_p", 7]
    return [object()]
