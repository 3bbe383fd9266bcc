"""Training-data writers: records -> LLaVA JSON records or ShareGPT (``messages``/``images``) records.

Both formats are what the common trainers read as is:

* LLaVA (LLaVA-1.5 ``llava_v1_5_mix665k.json``)::

    {"id": "a1", "image": "coco/1.jpg", "conversations": [{"from": "human", "value": "<image>\\nQ"},
                                                          {"from": "gpt", "value": "A"}], "task": "vqa"}

* ShareGPT as LLaMA-Factory's multimodal datasets (``formatting: sharegpt`` with ``messages``/``images``
  columns, role tags ``user``/``assistant``/``system``)::

    {"id": "a1", "messages": [{"role": "user", "content": "<image>\\nQ"}, {"role": "assistant", "content": "A"}],
     "images": ["coco/1.jpg"], "task": "vqa"}

* Hugging Face ``datasets`` (:func:`write_hf_dataset`, ``save_to_disk``): columns ``id``, ``images`` (a list
  of ``Image()``, the decoded pictures), ``messages`` in the typed-content form that trl's vision SFT and
  the processors' chat templates read (``{"role", "content": [{"type": "image"}, {"type": "text", "text"}]}``)
  and ``task``.

LLaVA's ``train.py`` looks roles up in ``{"human": ..., "gpt": ...}`` only, so a ``system`` turn there is a
``KeyError``: LLaVA records get system turns merged into the first human turn (``system="merge"``, the
default) or dropped (``system="drop"``). ShareGPT and datasets records keep them (both trainers read a
``system`` role).

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
SYSTEM_TURNS = ("merge", "drop")
IMAGE_TOKEN = "<image>"


def fold_system(turns: Sequence[Turn], mode: str = "merge") -> list[Turn]:
    """Turns without ``system`` ones: their text goes before the first user turn's (``merge``; an ``<image>``
    token that opens the user turn stays first) or is dropped (``drop``)."""
    if mode not in SYSTEM_TURNS:
        raise PreselError(f"system_turns={mode!r} must be one of {', '.join(SYSTEM_TURNS)}")
    system = [t.text for t in turns if t.role == "system" and t.text.strip()]
    rest = [t for t in turns if t.role != "system"]
    if mode == "drop" or not system or not rest:
        return rest
    k = next((i for i, t in enumerate(rest) if t.role == "user"), None)
    if k is None:
        return rest
    text, head = rest[k].text, ""
    if text.startswith(IMAGE_TOKEN):
        head, text = IMAGE_TOKEN + "\n", text[len(IMAGE_TOKEN):].lstrip("\n")
    rest[k] = Turn("user", head + "\n\n".join(system) + "\n\n" + text)
    return rest


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
                    include_extra: bool = False, system: str = "merge") -> dict[str, Any]:
    """One LLaVA training record: ``id``, ``image`` (if any), ``conversations`` (``from`` human/gpt, ``value``)
    and ``task`` (unless ``include_task=False``). System turns are merged into the first human turn or dropped
    (``system``, see :func:`fold_system`). Other fields are kept with ``include_extra``."""
    rid, image, turns, task, extra = _fields(record)
    turns = fold_system(turns, system)
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
                     include_task: bool = True, system: str = "merge") -> int:
    """Write records as one LLaVA JSON list (atomically); returns the number written."""
    return _write(path, (to_llava_record(r, include_task=include_task, system=system) for r in records))


def write_sharegpt_json(path: str | os.PathLike, records: Iterable[PoolRecord | Mapping[str, Any]], *,
                        include_task: bool = True) -> int:
    """Write records as one ShareGPT (``messages``/``images``) JSON list (atomically); returns the number written."""
    return _write(path, (to_sharegpt_record(r, include_task=include_task) for r in records))


def to_hf_messages(turns: Sequence[Turn]) -> list[dict[str, Any]]:
    """Typed-content messages: each ``<image>`` token becomes an ``{"type": "image"}`` part in place."""
    out = []
    for t in turns:
        pieces = t.text.split(IMAGE_TOKEN)
        parts: list[dict[str, Any]] = []
        for i, piece in enumerate(pieces):
            if i:
                parts.append({"type": "image", "text": None})
                piece = piece.lstrip("\n")
            if i < len(pieces) - 1:
                piece = piece.rstrip("\n")
            if piece:
                parts.append({"type": "text", "text": piece})
        out.append({"role": t.role, "content": parts})
    return out


def _hf_image(rid: str, image: str, root: Any) -> dict[str, Any]:
    """``{path, bytes}`` for ``datasets.Image()``: a file inside the image root (read by ``save_to_disk``), or
    the bytes of an image inside a table or tar shard (:mod:`presel.io.sources`; the same root policy)."""
    from presel.io import sources

    try:
        loc = sources.locate(image, root)  # refuses paths that leave the image root (symlinks resolved)
    except PreselError as e:
        raise PreselError(f"record '{rid}': {e}") from None
    if not sources.exists(loc):
        raise PreselError(f"record '{rid}': image {image} not found under {root}; fix the image root")
    if sources.split_ref(loc)[0] is None and not sources.is_url(loc):
        return {"path": loc, "bytes": None}
    return {"path": sources.export_name(image, root), "bytes": sources.read_bytes(loc)}


def write_hf_dataset(path: str | os.PathLike, records: Iterable[PoolRecord | Mapping[str, Any]],
                     image_root: str | os.PathLike) -> int:
    """A Hugging Face dataset (``save_to_disk``, atomically) with the images embedded: columns ``id``,
    ``images`` (list of ``Image()``), ``messages`` (typed content, see :func:`to_hf_messages`), ``task``.
    A record with an image but no ``<image>`` token gets one at the start of its first user turn.
    Needs ``datasets`` (``pip install 'presel[hf]'``)."""
    from pathlib import Path

    try:
        import datasets
    except ImportError:
        raise PreselError("the hf-datasets export needs the datasets package: pip install 'presel[hf]'") from None
    from presel.io.atomic import atomic_dir

    root = Path(image_root)
    rows: dict[str, list[Any]] = {"id": [], "images": [], "messages": [], "task": []}
    for rec in records:
        rid, image, turns, task, _ = _fields(rec)
        if image is not None and not any(IMAGE_TOKEN in t.text for t in turns):
            k = next((i for i, t in enumerate(turns) if t.role == "user"), 0)
            turns = list(turns)
            turns[k] = Turn(turns[k].role, f"{IMAGE_TOKEN}\n{turns[k].text}")
        rows["id"].append(rid)
        rows["images"].append([_hf_image(rid, image, root)] if image is not None else [])
        rows["messages"].append(to_hf_messages(turns))
        rows["task"].append(task)
    part = {"type": datasets.Value("string"), "text": datasets.Value("string")}
    features = datasets.Features({
        "id": datasets.Value("string"), "images": [datasets.Image()],
        "messages": [{"role": datasets.Value("string"), "content": [part]}], "task": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(rows, features=features)
    with atomic_dir(Path(path), overwrite=True) as tmp:
        ds.save_to_disk(str(tmp))  # images are read and embedded as bytes here
    return len(ds)
