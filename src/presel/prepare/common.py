"""Shared pieces of the dataset preparers: a streaming JSON-list reader, record checks, the pool writer.

The real annotation files are single JSON lists (LLaVA-665K: about 1 GB). :func:`iter_json_list` decodes
them one record at a time with the C scanner of :mod:`json`, so memory stays at a few chunks plus the
current record instead of the whole decoded list.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from presel.errors import PreselError

_WS = re.compile(r"[ \t\n\r]*")
CHUNK_CHARS = 1 << 22


def iter_json_list(path: str | os.PathLike, *, flag: str = "--annotations",
                   chunk_chars: int = CHUNK_CHARS) -> Iterator[tuple[int, Any]]:
    """Yield ``(position, element)`` of the JSON list in ``path`` (position is 0-based), streaming.

    Anything but one JSON list (an object, JSONL, truncated or invalid JSON, trailing data) is a
    :class:`PreselError` naming the file, the record and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise PreselError(f"{path}: file not found; check {flag}")
    scan = json.JSONDecoder().raw_decode
    f = open(path, encoding="utf-8-sig")  # noqa: SIM115 - closed in finally (generator); a BOM is skipped
    buf, pos, eof, lines_before = "", 0, False, 0

    def more() -> bool:
        nonlocal buf, pos, eof, lines_before
        if eof:
            return False
        try:
            chunk = f.read(max(chunk_chars, len(buf) - pos))
        except UnicodeDecodeError as e:
            raise PreselError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start} of a chunk); "
                              "save the file as UTF-8 JSON") from None
        if not chunk:
            eof = True
            return False
        if pos:
            lines_before += buf.count("\n", 0, pos)
            buf = buf[pos:]
            pos = 0
        buf += chunk
        return True

    def skip_ws() -> bool:
        """Skip whitespace; False at the end of the file."""
        nonlocal pos
        while True:
            pos = _WS.match(buf, pos).end()
            if pos < len(buf):
                return True
            if not more():
                return False

    def line() -> int:
        return lines_before + buf.count("\n", 0, pos) + 1

    try:
        if not skip_ws():
            raise PreselError(f"{path}: empty file; {flag} must be a JSON list of records")
        if buf[pos] != "[":
            kind = {"{": "a JSON object", '"': "a JSON string"}.get(buf[pos], f"'{buf[pos]}'")
            hint = " (looks like JSONL: one record per line)" if buf[pos] == "{" else ""
            raise PreselError(f"{path}: expected a JSON list of records, found {kind}{hint} at line {line()}; "
                              f"{flag} must be one JSON list [{{...}}, {{...}}] as the released file is")
        pos += 1
        if not skip_ws():
            raise PreselError(f"{path}: truncated after '['; the file is incomplete, download it again")
        if buf[pos] == "]":
            pos += 1
            return
        n = 0
        while True:
            while True:
                try:
                    obj, end = scan(buf, pos)
                    break
                except json.JSONDecodeError as e:
                    incomplete = e.pos >= len(buf) - 16 or e.msg.startswith("Unterminated string")
                    if not (incomplete and more()):
                        raise PreselError(f"{path} record {n} (line {line()}): not valid JSON ({e.msg}); "
                                          "the file is damaged or truncated, download it again") from None
            yield n, obj
            n += 1
            pos = end
            if not skip_ws():
                raise PreselError(f"{path}: truncated after record {n - 1} (no closing ']'); "
                                  "the file is incomplete, download it again")
            c = buf[pos]
            if c == ",":
                pos += 1
                if not skip_ws() or buf[pos] == "]":
                    raise PreselError(f"{path} line {line()}: trailing ',' after record {n - 1}; fix the file")
                continue
            if c == "]":
                pos += 1
                if skip_ws():
                    raise PreselError(f"{path} line {line()}: extra data after the closing ']'; "
                                      f"{flag} must hold exactly one JSON list")
                return
            raise PreselError(f"{path} record {n} (line {line()}): expected ',' or ']' after record {n - 1}, "
                              f"found '{c}'; fix the file")
    finally:
        f.close()


def check_record(rec: Any, where: str, *, fix: str) -> dict[str, Any]:
    """A record must be an object with ``id`` and a non-empty ``conversations`` list of from/value turns."""
    if not isinstance(rec, dict):
        raise PreselError(f"{where}: expected a JSON object, got {type(rec).__name__}; {fix}")
    if rec.get("id") is None or rec.get("id") == "":
        raise PreselError(f"{where}: missing 'id'; every record needs its original id (kept as orig_id); {fix}")
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        what = "missing 'conversations'" if conv is None else "'conversations' must be a non-empty list of turns"
        raise PreselError(f"{where} (id {rec['id']!r}): {what}; {fix}")
    return rec


def check_turns(rec: dict[str, Any], where: str, *, fix: str) -> None:
    """Image records: turns are {from, value} objects alternating human/gpt, starting with human."""
    for i, t in enumerate(rec["conversations"]):
        want = "human" if i % 2 == 0 else "gpt"
        if not isinstance(t, dict) or t.get("from") != want or not isinstance(t.get("value"), str):
            got = t.get("from") if isinstance(t, dict) else type(t).__name__
            raise PreselError(f"{where} (id {rec['id']!r}): turn {i} must be {{'from': '{want}', 'value': str}}, "
                              f"got from={got!r}; turns alternate human/gpt starting with human; {fix}")


def check_image_root(image_root: str | os.PathLike) -> Path:
    root = Path(image_root)
    if not root.is_dir():
        raise PreselError(f"--image-root {root}: not a directory; give the folder the 'image' paths are relative to")
    return root


class PoolWriter:
    """Writes ``pool.jsonl`` and ``annotations.json`` (one JSON list) row by row, plus per-task counts."""

    def __init__(self, tmp: Path):
        self.pool: TextIO = open(tmp / "pool.jsonl", "w", encoding="utf-8")  # noqa: SIM115
        self.ann: TextIO = open(tmp / "annotations.json", "w", encoding="utf-8")  # noqa: SIM115
        self.ann.write("[")
        self.n = 0
        self.task_records: dict[str, int] = {}
        self.task_images: dict[str, set[str]] = {}
        self.images: set[str] = set()

    def add(self, pool_head: dict[str, Any], annotation_head: dict[str, Any], conversations: Any) -> None:
        """One record: ``pool_head`` / ``annotation_head`` are the other fields; conversations go last in both."""
        conv = json.dumps(conversations, ensure_ascii=False, separators=(", ", ": "))  # encoded once, used twice
        self.pool.write(_with_conversations(pool_head, conv) + "\n")
        self.ann.write(("\n" if self.n == 0 else ",\n") + _with_conversations(annotation_head, conv))
        self.n += 1
        task, image = pool_head["task"], pool_head["image"]
        self.task_records[task] = self.task_records.get(task, 0) + 1
        self.task_images.setdefault(task, set()).add(image)
        self.images.add(image)

    def close(self) -> None:
        self.ann.write("\n]\n")
        for f in (self.pool, self.ann):
            f.flush()
            os.fsync(f.fileno())
            f.close()

    def abort(self) -> None:
        for f in (self.pool, self.ann):
            f.close()

    def tasks_json(self, order: list[str]) -> dict[str, Any]:
        names = [t for t in order if t in self.task_records] + sorted(set(self.task_records) - set(order))
        return {"order": names,
                "tasks": {t: {"records": self.task_records[t], "images": len(self.task_images[t])} for t in names},
                "records": self.n, "images": len(self.images)}


def _with_conversations(head: dict[str, Any], conv_json: str) -> str:
    h = json.dumps(head, ensure_ascii=False, separators=(", ", ": "))
    return (h[:-1] + ", " if head else "{") + '"conversations": ' + conv_json + "}"


def first_human(rec: dict[str, Any]) -> str:
    t = rec["conversations"][0]
    v = t.get("value") if isinstance(t, dict) else None
    return v if isinstance(v, str) else ""


def missing_images(root: Path, images: set[str], limit: int = 20) -> tuple[int, list[str]]:
    """Count the images that are not files under ``root``; return the count and the first few, sorted."""
    missing = sorted(im for im in images if not (root / im).is_file())
    return len(missing), missing[:limit]


def format_counts(title: str, counts: dict[str, int], total: int | None = None) -> str:
    """A small aligned table for the CLI."""
    width = max([len(k) for k in counts] + [len(title), 5])
    lines = [f"{title:<{width}}  {'records':>9}"]
    lines += [f"{k:<{width}}  {v:>9,}" for k, v in counts.items()]
    if total is not None:
        lines.append(f"{'total':<{width}}  {total:>9,}")
    return "\n".join(lines)
