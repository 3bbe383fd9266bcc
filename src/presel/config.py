"""Stage configuration helpers.

Each stage keeps its own dataclass next to its code (e.g. ``presel.selection.select.SelectConfig``),
validated in ``__post_init__``. These helpers turn one into a dict, build one from a dict or YAML
with clear errors for unknown keys, and describe the environment saved with every output.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import platform
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from presel.errors import PreselError

T = TypeVar("T")

_VERSIONED = ("presel", "numpy", "pyarrow", "faiss-cpu", "faiss-gpu", "scikit-learn", "torch", "transformers",
              "peft", "accelerate", "onnxruntime", "ray")


# --------------------------------------------------------------------------- what a setting changes
# A config field's ``metadata["effect"]`` says what changing it does to the step's result; this one declaration
# feeds both the pipeline's stage key (``Stage.neutral``) and each step's own resume identity (``identity``).
RESULT = "result"    # changes the result (the default): in every key
NEUTRAL = "neutral"  # how fast, where, how often, how it is accounted for: never in a key
FORMAT = "format"    # only the form of an output: the stage rewrites that output from what it has (no recompute)
EFFECTS = (RESULT, NEUTRAL, FORMAT)


def setting(default: Any = dataclasses.MISSING, *, effect: str = RESULT, help: str = "",
            default_factory: Any = dataclasses.MISSING, nargs: str | None = None) -> Any:
    """A config dataclass field with its effect (and optional help; ``nargs`` for a list flag that takes several
    words, ``--collect a b``) declared once."""
    if effect not in EFFECTS:
        raise ValueError(f"effect={effect!r} must be one of {', '.join(EFFECTS)}")
    md: dict[str, Any] = {"effect": effect}
    if help:
        md["help"] = help
    if nargs:
        md["nargs"] = nargs
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


def neutral(default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A result-neutral setting (speed, place, retries, accounting, logging): changing it recomputes nothing."""
    return setting(default, effect=NEUTRAL, **kw)


def output_format(default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A setting that only changes an output's form: the stage rewrites that output from what it has."""
    return setting(default, effect=FORMAT, **kw)


def effect_of(cls: type, name: str) -> str:
    """RESULT, NEUTRAL or FORMAT for a field (or a deprecated old name) of the config dataclass ``cls``."""
    name = deprecated_names(cls).get(name, name)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name == name:
            return f.metadata.get("effect", RESULT)
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


def fields_with(cls: type, effect: str) -> frozenset[str]:
    """The fields of ``cls`` with this effect, plus their deprecated old names."""
    names = {f.name for f in dataclasses.fields(cls) if f.metadata.get("effect", RESULT) == effect}  # type: ignore[arg-type]
    return frozenset(names | {old for old, new in deprecated_names(cls).items() if new in names})


def identity(cfg: Any, **override: Any) -> dict[str, Any]:
    """A step's resume identity from its config: every result field (neither neutral nor format), JSON-ready;
    ``override`` replaces values by what they resolve to (a model's digest, a template's fingerprint)."""
    keep = {f.name for f in dataclasses.fields(cfg) if f.metadata.get("effect", RESULT) == RESULT}
    out = {k: v for k, v in to_dict(cfg).items() if k in keep}
    out.update(override)
    return out


def same_identity(old: Any, new: dict[str, Any], *, required: tuple[str, ...] = ()) -> bool:
    """Whether a stored identity ``old`` describes the same result as ``new``. Keys only one side has are settings
    another presel version did not record (one it counted that is now neutral, or one added since with its
    default), so only the keys both hold are compared; ``required`` keys must be in both."""
    if not isinstance(old, dict) or any(k not in old or k not in new for k in required):
        return False
    return all(old[k] == v for k, v in to_jsonable(new).items() if k in old)


def to_jsonable(blob: Any) -> Any:
    import json

    return json.loads(json.dumps(to_dict(blob)))


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
    """Build ``cls`` from ``data``: unknown keys and values of the wrong type (from the field annotations) are
    errors naming the source, the key, the value and the fix; then the dataclass's own checks run."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for old, new in deprecated_names(cls).items():
        if old in data:
            print(f"presel: {source}: '{old}' is deprecated, write '{new}'", file=sys.stderr)
            names.add(old)  # an InitVar of the dataclass, mapped to the new name in its __post_init__
    unknown = sorted(set(data) - names)
    if unknown:
        raise PreselError(f"{source}: unknown setting(s) {', '.join(unknown)} for {cls.__name__}; "
                          f"known: {', '.join(sorted(names))}")
    check_types(cls, data, source=source)
    try:
        return cls(**data)
    except TypeError as e:
        raise PreselError(f"{source}: {e}") from None
    except PreselError as e:
        if str(e).startswith(source):
            raise
        raise PreselError(f"{source}: {e}") from None


def deprecated_names(cls: type) -> dict[str, str]:
    """Old setting names a config dataclass still accepts (its ``DEPRECATED`` class attribute): old -> new."""
    return dict(getattr(cls, "DEPRECATED", {}) or {})


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be resolved here: no type check for this class
        return {}


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as YAML/JSON gives it) fits ``hint``; True for annotations this does not know."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is Path or hint is os.PathLike:
        return isinstance(value, (str, os.PathLike))
    if origin in (tuple, list) or hint in (tuple, list):
        item = args[0] if args else Any
        if item is str and isinstance(value, str):
            return True  # "q_proj,v_proj": the dataclass splits it
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (tuple, list):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    return _WORDS.get(hint, getattr(hint, "__name__", str(hint)))


def _fix(name: str, value: Any, hint: Any) -> str:
    if isinstance(value, str):
        import yaml

        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if not isinstance(parsed, str) and _type_ok(parsed, hint):
            return f"write it without quotes: `{name}: {value}`"
    return f"write `{name}: ` followed by {_describe(hint)}"


def check_types(cls: type, data: dict[str, Any], *, source: str = "config") -> None:
    """Each value of ``data`` against the annotation of the ``cls`` field of that name."""
    hints = _hints(cls)
    for name, value in data.items():
        hint = hints.get(name)
        if hint is not None and not _type_ok(value, hint):
            got = "null" if value is None else f"{type(value).__name__}"
            from presel.io.text import short

            raise PreselError(f"{source}: {name}={short(value)} must be {_describe(hint)}, got {got}; "
                              f"{_fix(name, value, hint)}")


# --------------------------------------------------------------------------- command-line flags from a config


def _cli_type(base: type, name: str, zero_is_none: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text.strip().lower() in ("none", "null"):
            return None
        try:
            value = base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {_describe(base)} (or none)") from None
        if zero_is_none and value == 0:
            print(f"presel: --{name.replace('_', '-')} 0 is deprecated, write --{name.replace('_', '-')} none",
                  file=sys.stderr)
            return None
        return value

    parse.__name__ = base.__name__
    return parse


def add_config_arguments(group: Any, cls: type, *, skip: tuple[str, ...] = (), helps: dict[str, str] | None = None,
                         choices: dict[str, tuple[str, ...]] | None = None, zero_is_none: tuple[str, ...] = (),
                         only: tuple[str, ...] | None = None) -> None:
    """One ``--field-name`` flag per field of the config dataclass ``cls`` (the YAML key with ``-``): default from the
    dataclass, type from its annotation (``none`` for an optional value), help from ``helps`` or the field's
    ``metadata['help']``; booleans get ``--x/--no-x``. ``zero_is_none``: fields where ``0`` still means none (old flags).
    ``only``: just these fields (one argument group each), in the dataclass's order."""
    helps = {**field_helps(cls), **(helps or {})}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        hint = hints.get(f.name, str)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
        base = args[0] if optional and len(args) == 1 else hint
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        default = None if required else f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kw: dict[str, Any] = {"dest": f.name, "help": helps.get(f.name, "")}
        kw.update({"required": True} if required else {"default": default})
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif base is dict or typing.get_origin(base) is dict:
            kw["type"] = _json_mapping
        elif f.metadata.get("nargs"):
            kw["nargs"] = f.metadata["nargs"]
        elif typing.get_origin(base) in (tuple, list):
            kw["type"] = lambda t: None if t.lower() in ("none", "null") else tuple(x for x in re.split(r"[,\s]+", t) if x)
        elif base in (int, float, str):
            kw["type"] = _cli_type(base, f.name, f.name in zero_is_none) if (optional or base is not str) else str
        if choices and f.name in choices:
            kw["choices"] = choices[f.name]
        group.add_argument("--" + f.name.replace("_", "-"), **kw)


def field_helps(cls: type) -> dict[str, str]:
    """Help text of each field of ``cls``: its ``metadata['help']``, else its entry in the class docstring
    (``name: text``), else the comment after it in the source (``name: int = 4  # text``)."""
    import inspect

    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    out: dict[str, str] = {}
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        src = ""
    for name in names:
        m = re.search(rf"^\s+{re.escape(name)}\s*:[^\n#]*#\s*(.+)$", src, re.M)
        if m:
            out[name] = m.group(1).strip()
    doc = inspect.getdoc(cls) or ""
    pattern = r"(?:^|(?<=[\s;.]))(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) + r"):\s"
    marks = list(re.finditer(pattern, doc, re.M)) if names else []
    for i, m in enumerate(marks):
        text = doc[m.end(): marks[i + 1].start() if i + 1 < len(marks) else len(doc)]
        text = " ".join(text.split()).rstrip(" ;,")
        if text:
            out[m.group(1)] = text
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.metadata.get("help"):
            out[f.name] = f.metadata["help"]
    return {k: v.replace("%", "%%") for k, v in out.items()}


def _json_mapping(text: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object; write e.g. '{{\"top_p\": 0.9}}'")
    return value


class _DeprecatedFlag(argparse.Action):
    """An old flag: stores like the new one and says which flag to write instead."""

    def __init__(self, option_strings: list[str], dest: str, *, flag_value: Any = None, new: str = "", **kw: Any):
        self.flag_value, self.new = flag_value, new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        print(f"presel: {option_string} is deprecated, write {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.flag_value if self.nargs == 0 else values)


def add_deprecated_alias(group: Any, old: str, dest: str, *, action: str | None = None, new: str | None = None,
                         **kw: Any) -> None:
    """An old flag kept working, hidden from --help, with a warning naming the new one (``--save-every`` for
    ``--save-every-steps``). ``action``: ``store_true``/``store_false`` for an old switch."""
    new = new or "--" + dest.replace("_", "-")
    if action in ("store_true", "store_false"):
        kw.update(nargs=0, flag_value=action == "store_true")
        new = new if action == "store_true" or new.startswith("--no-") else "--no-" + new[2:]
    group.add_argument(old, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, action=_DeprecatedFlag,
                       new=new, **kw)


def config_from_args(cls: type[T], args: Any, *, skip: tuple[str, ...] = ()) -> T:
    """The config dataclass from parsed flags of :func:`add_config_arguments` (same checks as a YAML section); a
    field with no flag value in ``args`` takes the dataclass default."""
    data = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.name not in skip and hasattr(args, f.name)}
    return from_dict(cls, data, source="command line")


def load_yaml(path: str | Path) -> dict[str, Any]:
    from presel.io.yamlfile import read_yaml  # strict: duplicate keys, non-UTF-8, folders, alias bombs

    return read_yaml(path)


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
