"""Training-data writers: records -> LLaVA JSON records or ShareGPT (``messages``/``images``) records.

Both formats are what the common trainers read as is:

* LLaVA (LLaVA-1.5 ``llava_v1_5_mix665k.json``)::

    {"id": "a1", "image": "coco/1.jpg", "conversations": [{"from": "human", "value": "<image>\\nQ"},
                                                          {"from": "gpt", "value": "A"}], "task": "vqa"}

* ShareGPT as LLaMA-Factory's multimodal datasets (``formatting: sharegpt`` with ``messages``/``images``
  columns, role tags ``user``/``assistant``/``system``)::

    {"id": "a1", "messages": [{"role": "user", "content": "<image>\\nQ"}, {"role": "assistant", "content": "A"}],
     "images": ["coco/1.jpg"], "task": "vqa"}

Image paths stay relative to the pool's image root. The ``<image>`` token stays in the text where it is.
Input records may be :class:`presel.records.PoolRecord` objects or dicts in either format (LLaVA
``conversations`` with ``from``/``value``, or ``messages`` with ``role``/``content``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from presel.errors import PreselError
from presel.records import PoolRecord, Turn

_TO_ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_TO_LLAVA = {"user": "human", "assistant": "gpt", "system": "system"}


def normalize_turns(conversations: Sequence[Any], *, where: str = "record") -> list[Turn]:
    """Turns from :class:`Turn` objects or dicts (``from``/``value`` or ``role``/``content``)."""
    if not isinstance(conversations, (list, tuple)):
        raise PreselError(f"{where}: conversations must be a list of turns, got {type(conversations).__name__}")
    out: list[Turn] = []
    for t in conversations:
        if isinstance(t, Turn):
            out.append(t)
            continue
        if not isinstance(t, Mapping):
            raise PreselError(f"{where}: each turn must be an object with from/value or role/content, got {t!r:.80}")
        role = t.get("from", t.get("role"))
        text = t.get("value", t.get("content"))
        if isinstance(text, list):  # OpenAI-style content parts
            text = "".join("<image>" if isinstance(p, Mapping) and p.get("type") in ("image", "image_url")
                           else str(p.get("text", "")) if isinstance(p, Mapping) else str(p) for p in text)
        if role not in _TO_ROLE or not isinstance(text, str):
            raise PreselError(f"{where}: turn needs from/role in {sorted(_TO_ROLE)} and a text value; got {t!r:.80}")
        out.append(Turn(_TO_ROLE[role], text))
    return out


def _fields(record: PoolRecord | Mapping[str, Any]) -> tuple[str, str | None, list[Turn], str | None, dict[str, Any]]:
    if isinstance(record, PoolRecord):
        if record.conversations is None:
            raise PreselError(f"record '{record.id}' (image {record.image}) has no conversation to export")
        extra = dict(record.extra or {})
        return record.id, record.image, list(record.conversations), record.task, extra
    if not isinstance(record, Mapping):
        raise PreselError(f"cannot export {type(record).__name__}; pass PoolRecord objects or dicts")
    rid = record.get("id")
    where = f"record '{rid}'"
    if rid is None or rid == "":
        raise PreselError(f"record without an 'id' cannot be exported: {dict(record)!r:.120}")
    image = record.get("image")
    if image is None and "images" in record:
        imgs = record["images"]
        if isinstance(imgs, list) and len(imgs) > 1:
            raise PreselError(f"{where}: {len(imgs)} images; only single-image records are exported")
        image = imgs[0] if isinstance(imgs, list) and imgs else (imgs or None)
    conv = record.get("conversations", record.get("messages"))
    if conv is None:
        raise PreselError(f"{where}: no 'conversations' or 'messages' to export")
    extra = {k: v for k, v in record.items() if k not in ("id", "image", "images", "conversations", "messages", "task")}
    return str(rid), image, normalize_turns(conv, where=where), record.get("task"), extra


def to_llava_record(record: PoolRecord | Mapping[str, Any], *, include_task: bool = True,
                    include_extra: bool = False) -> dict[str, Any]:
    """One LLaVA training record: ``id``, ``image`` (if any), ``conversations`` (``from`` human/gpt/system,
    ``value``) and ``task`` (unless ``include_task=False``). Other fields are kept with ``include_extra``."""
    rid, image, turns, task, extra = _fields(record)
    out: dict[str, Any] = dict(extra) if include_extra else {}
    out["id"] = rid
    if image is not None:
        out["image"] = image
    out["conversations"] = [{"from": _TO_LLAVA[t.role], "value": t.text} for t in turns]
    if include_task and task is not None:
        out["task"] = task
    return out


def to_sharegpt_record(record: PoolRecord | Mapping[str, Any], *, include_task: bool = True,
                       include_extra: bool = False) -> dict[str, Any]:
    """One ShareGPT/LLaMA-Factory record: ``id``, ``messages`` (``role`` user/assistant/system, ``content``),
    ``images`` (a list: one path, or empty for text-only) and ``task``."""
    rid, image, turns, task, extra = _fields(record)
    out: dict[str, Any] = dict(extra) if include_extra else {}
    out["id"] = rid
    out["messages"] = [{"role": t.role, "content": t.text} for t in turns]
    out["images"] = [image] if image is not None else []
    if include_task and task is not None:
        out["task"] = task
    return out


def _write(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """A JSON list, one record per line (diff- and grep-friendly), written atomically."""
    from presel.io.atomic import atomic_file, json_default

    n = 0
    with atomic_file(path) as f:
        f.write("[")
        for row in rows:
            f.write(",\n" if n else "\n")
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True, default=json_default))
            n += 1
        f.write("\n]\n" if n else "]\n")
    return n


def write_llava_json(path: str | os.PathLike, records: Iterable[PoolRecord | Mapping[str, Any]], *,
                     include_task: bool = True) -> int:
    """Write records as one LLaVA JSON list (atomically); returns the number written."""
    return _write(path, (to_llava_record(r, include_task=include_task) for r in records))


def write_sharegpt_json(path: str | os.PathLike, records: Iterable[PoolRecord | Mapping[str, Any]], *,
                        include_task: bool = True) -> int:
    """Write records as one ShareGPT (``messages``/``images``) JSON list (atomically); returns the number written."""
    return _write(path, (to_sharegpt_record(r, include_task=include_task) for r in records))
