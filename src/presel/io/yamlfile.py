"""Read a YAML file strictly: one located error for a file that is not one clean YAML mapping.

Refused, each with the file (and line) named: a folder, FIFO or device in the file's place, bytes that are not
UTF-8, invalid YAML, a key given twice in one mapping (YAML would keep the last one silently), nesting deeper
than Python can read, and aliases that expand into more than ``MAX_VALUES`` values (a "billion laughs" file:
tiny on disk, but any message or hash that prints the value would run for minutes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from presel.errors import PreselError

MAX_VALUES = 1_000_000


def _loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses a key given twice in one mapping."""

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> dict[Any, Any]:
        loader.flatten_mapping(node)
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader's own error follows
            if first is not None:
                from presel.io.text import short

                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {short(key)} (first on line {first.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return StrictLoader


def expanded_size(value: Any, limit: int = MAX_VALUES) -> int:
    """How many values ``value`` holds once every shared (aliased) part is counted each time it appears; stops
    counting past ``limit``."""
    memo: dict[int, int] = {}

    def size(v: Any) -> int:
        if isinstance(v, dict):
            items = [*v.keys(), *v.values()]
        elif isinstance(v, list | tuple | set):
            items = list(v)
        else:
            return 1
        key = id(v)
        if key in memo:
            return memo[key]
        memo[key] = limit + 1  # a cycle counts as too big
        total = 1
        for x in items:
            total += size(x)
            if total > limit:
                break
        memo[key] = total
        return total

    return size(value)


def _nul_at(value: Any, at: str = "") -> tuple[str, str] | None:
    """The dotted key path and the text of the first string (key or value) holding a NUL character, or None."""
    if isinstance(value, str):
        return (at, value) if "\0" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        sub = f"{at}.{k}" if at else str(k)
        if isinstance(k, str) and "\0" in k:
            return sub, k
        found = _nul_at(v, sub)
        if found is not None:
            return found
    return None


def read_yaml(path: str | os.PathLike, *, what: str = "config file", mapping: bool = True) -> Any:
    """The YAML document in ``path`` (a mapping when ``mapping``; an empty file is ``{}``)."""
    import yaml

    from presel.io.paths import require_regular

    p = Path(path)
    if p.is_dir():
        raise PreselError(f"{p} is a folder, not a {what}; give the YAML file itself (e.g. {p / 'config.yaml'})")
    require_regular(p, what)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise PreselError(f"{p}: {what} not found") from None
    except OSError as e:
        raise PreselError(f"{p}: cannot read the {what} ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise PreselError(f"{p} line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {col}); save the "
                          "file as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        from presel.io.text import cut

        raise PreselError(f"{p}{line}: not valid YAML ({cut(str(getattr(e, 'problem', None) or e))})") from None
    except RecursionError:
        raise PreselError(f"{p}: YAML nested too deeply (more than Python can read); fix the file") from None
    if expanded_size(data) > MAX_VALUES:
        raise PreselError(f"{p}: its aliases (*name) expand into more than {MAX_VALUES:,} values; write the values "
                          "out instead of nesting aliases")
    found = _nul_at(data)
    if found is not None:
        from presel.io.text import short

        where, text = found
        raise PreselError(f"{p}: {where or 'the document'}={short(text)} holds a NUL character, which no path, name or "
                          "setting can; fix the file")
    if data is None and mapping:
        return {}
    if mapping and not isinstance(data, dict):
        raise PreselError(f"{p}: a {what} must be a YAML mapping (key: value lines), found {type(data).__name__}")
    return data
