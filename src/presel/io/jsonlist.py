"""Stream the elements of one big JSON list (LLaVA-665K is a single 1 GB list) without decoding it whole."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from presel.errors import PreselError

_WS = re.compile(r"[ \t\n\r]*")
CHUNK_CHARS = 1 << 22


def iter_json_list(path: str | os.PathLike, *, flag: str = "--annotations",
                   chunk_chars: int = CHUNK_CHARS) -> Iterator[tuple[int, Any]]:
    """Yield ``(position, element)`` of the JSON list in ``path`` (position is 0-based), streaming.

    Anything but one JSON list (an object, JSONL, truncated or invalid JSON, trailing data) is a
    :class:`PreselError` naming the file, the record and the line.
    """
    from presel.io.paths import require_regular

    path = Path(path)
    require_regular(path, flag if flag.startswith("--") else "file")
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
                except RecursionError:
                    raise PreselError(f"{path} record {n} (line {line()}): JSON nested too deeply (more than Python "
                                      "can read); fix or remove that record") from None
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
