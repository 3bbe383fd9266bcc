"""Shared pieces of the dataset preparers: a streaming JSON-list reader, record checks, the pool writer.

The real annotation files are single JSON lists (LLaVA-665K: about 1 GB). :func:`iter_json_list` decodes
them one record at a time with the C scanner of :mod:`json`, so memory stays at a few chunks plus the
current record instead of the whole decoded list.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TextIO

from presel.errors import PreselError
from presel.io.jsonlist import CHUNK_CHARS, iter_json_list  # noqa: E402,F401 - re-exported


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
