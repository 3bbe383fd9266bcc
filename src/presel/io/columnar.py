"""A fast, columnar pool reader for selection: ids, image paths, image keys and tasks, no conversations.

:func:`read_pool_columns` reads a local JSONL file with pyarrow's JSON reader (a JSON list with the
stdlib parser, Parquet with pyarrow) into columns, computes the image keys vectorised and once, and
returns a :class:`presel.records.Pool` whose records carry no conversations (selection never reads
them) and whose image keys are already known (``Pool.keys``).

It is only a faster route to the result of :func:`presel.io.manifest.read_pool`: whenever a file
holds anything the columnar route does not handle exactly as ``read_pool`` does (non-string ids,
a record with several images, duplicate or missing ids, blank lines, invalid JSON, a BOM, ...), or
the pool is not a plain local file, it calls ``read_pool`` itself, which reads the file record by
record and reports any problem with its file and line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from presel.records import Pool, PoolRecord, image_key

# a path that os.path.normpath would change: backslashes, doubled slashes, '.' or '..' components, a
# trailing slash; everything else is its own image key (see presel.records.image_key)
_NEEDS_NORMPATH = r"\\|//|(^|/)\.{1,2}(/|$)|/$"


class _Fallback(Exception):
    """The columnar route cannot reproduce read_pool exactly here: read record by record instead."""


def image_keys(images: Sequence[str]) -> list[str]:
    """``[image_key(p) for p in images]``, with ``os.path.normpath`` called only on the paths it would change."""
    import re

    needs = re.compile(_NEEDS_NORMPATH).search
    return [image_key(p) if needs(p) else p for p in images]


def read_pool_columns(path: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                      task_field: str | None = None, task_map: str | os.PathLike | Mapping[str, str] | None = None,
                      task_rules: Sequence[str] | Mapping[str, str] | str | os.PathLike | None = None,
                      default_task: str | None = None, id_field: str = "id", image_field: str = "image") -> Pool:
    """The pool as :func:`presel.io.manifest.read_pool` reads it, minus conversations; see the module docstring."""
    from presel.io.manifest import read_pool

    kw: dict[str, Any] = dict(image_root=image_root, task_field=task_field, task_map=task_map, task_rules=task_rules,
                              default_task=default_task, id_field=id_field, image_field=image_field)
    p = Path(path) if not isinstance(path, Path) else path
    suffix = p.suffix.lower()
    if id_field == "@index" or not p.is_file() or suffix not in (".jsonl", ".ndjson", ".parquet", ".pq", ".json"):
        return read_pool(path, **kw)
    try:
        cols = _read_columns(p, suffix, id_field, image_field, task_field)
        return _to_pool(p, cols, **kw)
    except (_Fallback, UnicodeDecodeError):  # invalid UTF-8 surfaces only when strings are converted
        return read_pool(path, **kw)


def _read_columns(path: Path, suffix: str, id_field: str, image_field: str, task_field: str | None) -> dict[str, list]:
    names = [id_field, image_field, *([task_field] if task_field else ["task", "task_name"])]
    if image_field == "image":
        names.append("images")
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_columns(path, names)
    if suffix == ".json":
        return _json_list_columns(path, names)
    return _parquet_columns(path, names)


def _jsonl_columns(path: Path, names: list[str]) -> dict[str, list]:
    import re

    import pyarrow as pa
    import pyarrow.json as pj

    data = path.read_bytes()
    # line numbers are positions only without blank lines; a BOM or a blank line: read_pool handles it
    if data.startswith((b"\xef\xbb\xbf", b"\n", b"\r")) or re.search(rb"\n[ \t\r]*\n", data):
        raise _Fallback
    schema = pa.schema([(n, pa.list_(pa.string()) if n == "images" else pa.string()) for n in dict.fromkeys(names)])
    try:
        table = pj.read_json(pa.BufferReader(data), read_options=pj.ReadOptions(block_size=1 << 24),
                             parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"))
    except (pa.ArrowException, ValueError):
        raise _Fallback from None
    return {n: table.column(n).to_pylist() for n in dict.fromkeys(names)}


def _json_list_columns(path: Path, names: list[str]) -> dict[str, list]:
    import json

    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise _Fallback from None
    if not isinstance(data, list) or not all(type(r) is dict for r in data):
        raise _Fallback
    out: dict[str, list] = {}
    for n in dict.fromkeys(names):
        col = [r.get(n) for r in data]
        want = list if n == "images" else str
        if not all(v is None or type(v) is want for v in col):
            raise _Fallback
        out[n] = col
    return out


def _parquet_columns(path: Path, names: list[str]) -> dict[str, list]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError):
        raise _Fallback from None
    present = [n for n in dict.fromkeys(names) if n in schema.names]
    for n in present:
        t = schema.field(n).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)) and not (n == "images" and pa.types.is_list(t)):
            raise _Fallback  # bytes columns (image pools), numbers: read_pool's own rules
    try:
        table = pq.read_table(path, columns=present)
    except (pa.ArrowException, OSError):
        raise _Fallback from None
    n_rows = table.num_rows
    return {n: table.column(n).to_pylist() if n in present else [None] * n_rows for n in dict.fromkeys(names)}


def _to_pool(path: Path, cols: dict[str, list], *, image_root, task_field, task_map, task_rules, default_task,
             id_field: str, image_field: str) -> Pool:
    from presel.io.manifest import _root, load_task_map, parse_task_rules

    ids = cols[id_field]
    images = list(cols[image_field])
    multi = cols.get("images") if image_field == "image" else None
    if multi is not None:
        for i, img in enumerate(images):
            if img is None and multi[i] is not None:
                if len(multi[i]) > 1:
                    raise _Fallback  # read_pool's error names the record
                images[i] = multi[i][0] if multi[i] else None
    keep = [i for i, img in enumerate(images) if img]
    if not keep or any(ids[i] in (None, "") for i in keep):
        raise _Fallback
    ids = [ids[i] for i in keep] if len(keep) < len(ids) else ids
    images = [images[i] for i in keep] if len(keep) < len(images) else images
    if len(set(ids)) != len(ids):
        raise _Fallback
    keys = image_keys(images)
    tasks: list[str | None] = [None] * len(ids)
    tmap = load_task_map(task_map) if isinstance(task_map, (str, os.PathLike)) else (dict(task_map) if task_map else None)
    if tmap is not None:
        tasks = [tmap.get(i) for i in ids]
    rules = parse_task_rules(task_rules)
    if rules:
        tasks = [t if t is not None else next((task for prefix, task in rules if k.startswith(prefix)), None)
                 for t, k in zip(tasks, keys)]
    fields = [task_field] if task_field else ["task", "task_name"]
    for f in fields:
        col = cols[f]
        col = [col[i] for i in keep] if len(keep) < len(col) else col
        tasks = [t if t is not None or v in (None, "") else v for t, v in zip(tasks, col)]
    if default_task is not None:
        tasks = [default_task if t is None else t for t in tasks]
    if any(t is None for t in tasks):
        raise _Fallback  # read_pool names the first record without a task
    lines = [i + 1 for i in keep]
    records = [PoolRecord(i, img, t, n) for i, img, t, n in zip(ids, images, tasks, lines)]
    root = _root(image_root if image_root is not None else path.parent)
    fmt = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}.get(path.suffix.lower(), "parquet")
    return Pool(records, path, root, text_only=len(cols[id_field]) - len(keep), format=fmt, keys=keys)
