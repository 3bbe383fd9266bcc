"""Hand-off: a final training set (LLaVA JSON, e.g. ``gen/train.json``) exported for other trainers.

* ``to="llava"`` - the LLaVA repository (haotian-liu/LLaVA ``llava/train/train.py``): ``train.json`` (LLaVA
  records) and ``images/`` holding every referenced image at its relative path (symlinks or copies), so
  ``--data_path OUT/train.json --image_folder OUT/images`` is all the trainer needs.
* ``to="llama-factory"`` - LLaMA-Factory: ``<name>.json`` in its ShareGPT format (``messages`` with
  ``role``/``content``, ``images`` a list of paths) and ``dataset_info.json`` with the matching entry
  (``formatting: sharegpt``, ``columns`` messages/images, ``tags`` role/content/user/assistant/system, as
  LLaMA-Factory's data/README.md documents). Image paths are ``images/<relative path>`` so they resolve
  against ``media_dir`` (which defaults to ``dataset_dir``): train with ``dataset_dir: OUT``,
  ``dataset: <name>``.

* ``to="hf-datasets"`` - a Hugging Face ``datasets`` folder (``save_to_disk``; load with
  ``datasets.load_from_disk(OUT/<name>)``): ``id``, ``images`` (embedded ``Image()`` list), ``messages``
  (typed content, as trl's vision SFT reads) and ``task`` (:func:`presel.io.export.write_hf_dataset`).

LLaVA's ``train.py`` knows only the ``human`` and ``gpt`` roles: system turns are merged into the first
human turn (``system_turns="merge"``) or dropped (``"drop"``) in LLaVA exports; the other targets keep them.

``image_mode="none"`` writes no image folder: LLaVA uses ``--image_folder IMAGE_ROOT``; LLaMA-Factory gets
absolute image paths. Every image record must hold exactly one ``<image>`` token (it is added at the
start of the first user turn when missing, as both trainers need it). Record conversion is
:mod:`presel.io.export`. Output directories are written atomically, with ``handoff.json`` (what to pass
to the trainer) and ``config.json``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from presel.errors import PreselError

TARGETS = ("llava", "llama-factory", "hf-datasets")
IMAGE_MODES = ("symlink", "copy", "none")
IMAGE_DIR = "images"
IMAGE_TOKEN = "<image>"

SHAREGPT_COLUMNS = {"messages": "messages", "images": "images"}
SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"}


@dataclass
class ExportConfig:
    """Settings of ``presel prepare export``.

    train: the training set (LLaVA JSON list or JSONL: ``id``, ``image``, ``conversations``, ``task``).
    image_root: the folder the ``image`` paths are relative to.
    to: ``llava`` or ``llama-factory``.
    image_mode: ``symlink`` (default), ``copy`` or ``none`` (no image folder; see the module doc).
    name: the dataset name (LLaMA-Factory's ``dataset:`` key and file name; the hf-datasets folder name).
    system_turns: LLaVA target: ``merge`` system turns into the first human turn, or ``drop`` them.
    """

    train: str
    image_root: str
    to: str = "llava"
    image_mode: str = "symlink"
    name: str = "presel_train"
    system_turns: str = "merge"

    def __post_init__(self) -> None:
        self.train, self.image_root = str(self.train), str(self.image_root)
        if self.to not in TARGETS:
            raise PreselError(f"to={self.to!r} must be one of {', '.join(TARGETS)}")
        if self.image_mode not in IMAGE_MODES:
            raise PreselError(f"image_mode={self.image_mode!r} must be one of {', '.join(IMAGE_MODES)}")
        from presel.io.export import SYSTEM_TURNS

        if self.system_turns not in SYSTEM_TURNS:
            raise PreselError(f"system_turns={self.system_turns!r} must be one of {', '.join(SYSTEM_TURNS)}")
        if not self.name or any(c in self.name for c in "/\\ ") or self.name.startswith("."):
            raise PreselError(f"name={self.name!r} must be a plain dataset name such as presel_train")


def llama_factory_entry(file_name: str) -> dict[str, Any]:
    """The ``dataset_info.json`` entry for a ShareGPT multimodal file written by :func:`export_training_set`."""
    return {"file_name": file_name, "formatting": "sharegpt", "columns": dict(SHAREGPT_COLUMNS),
            "tags": dict(SHAREGPT_TAGS)}


def _safe_rel(image: str, where: str) -> str:
    p = PurePosixPath(image.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise PreselError(f"{where}: image path '{image}' must be relative to --image-root without '..'; "
                          "rewrite it relative to the image root")
    return str(PurePosixPath(*[x for x in p.parts if x != "."]))


def _load(cfg: ExportConfig) -> list[dict[str, Any]]:
    """Training records as LLaVA dicts, checked: id, alternating user/assistant turns, one <image> per image."""
    from presel.io.export import normalize_turns
    from presel.io.manifest import iter_raw_records

    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for line, rec in iter_raw_records(cfg.train):
        where = f"{cfg.train} record {line}"
        rid = rec.get("id")
        if rid is None or rid == "":
            raise PreselError(f"{where}: missing 'id'; every training record needs one")
        rid = str(rid)
        if rid in seen:
            raise PreselError(f"{where}: duplicate id '{rid}' (first in record {seen[rid]}); ids must be unique")
        seen[rid] = line
        where = f"{where} (id '{rid}')"
        conv = rec.get("conversations", rec.get("messages"))
        if conv is None:
            raise PreselError(f"{where}: missing 'conversations'; a training record needs its conversation")
        turns = normalize_turns(conv, where=where)
        body = turns[1:] if turns and turns[0].role == "system" else turns
        if not body or len(body) % 2 or any(t.role != ("user" if i % 2 == 0 else "assistant") for i, t in enumerate(body)):
            raise PreselError(f"{where}: turns must alternate human/gpt (user/assistant), starting with human and "
                              "ending with gpt; both trainers drop or reject other records - fix or remove it")
        image = rec.get("image")
        if image is None and isinstance(rec.get("images"), list):
            if len(rec["images"]) > 1:
                raise PreselError(f"{where}: {len(rec['images'])} images; export handles single-image records")
            image = rec["images"][0] if rec["images"] else None
        n_tok = sum(t.text.count(IMAGE_TOKEN) for t in turns)
        conv_out = [{"from": {"user": "human", "assistant": "gpt"}.get(t.role, t.role), "value": t.text} for t in turns]
        if image is not None and image != "":
            if not isinstance(image, str):
                raise PreselError(f"{where}: 'image' must be a path string")
            image = _safe_rel(image, where)
            if n_tok > 1:
                raise PreselError(f"{where}: {n_tok} '{IMAGE_TOKEN}' tokens for one image; keep one")
            if n_tok == 0:
                k = 1 if turns[0].role == "system" else 0
                conv_out[k] = dict(conv_out[k], value=f"{IMAGE_TOKEN}\n{conv_out[k]['value']}")
        else:
            image = None
            if n_tok:
                raise PreselError(f"{where}: text-only record contains '{IMAGE_TOKEN}'; remove it or add the image")
        row: dict[str, Any] = {"id": rid, "conversations": conv_out}
        if image is not None:
            row["image"] = image
        if rec.get("task") is not None:
            row["task"] = rec["task"]
        out.append(row)
    if not out:
        raise PreselError(f"{cfg.train}: no training records")
    return out


def _place_images(images: list[str], root: Path, dest: Path, mode: str) -> None:
    from presel.io.sources import locate

    for rel in images:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        src = locate(rel, root)  # checked before anything was written; resolved again here
        if mode == "symlink":
            os.symlink(os.path.abspath(src), target)
        else:
            shutil.copyfile(src, target)


def export_training_set(train: str | os.PathLike, image_root: str | os.PathLike, out: str | os.PathLike, *,
                        to: str = "llava", image_mode: str = "symlink", name: str = "presel_train",
                        overwrite: bool = False, system_turns: str = "merge") -> dict[str, Any]:
    """Export ``train`` for the LLaVA repository or LLaMA-Factory into ``out``; return ``handoff.json``'s content.

    Every referenced image must exist under ``image_root`` (checked before anything is written).
    """
    from presel.config import resolved_config
    from presel.io.atomic import atomic_dir, write_json
    from presel.io.export import write_hf_dataset, write_llava_json, write_sharegpt_json

    cfg = ExportConfig(str(train), str(image_root), to, image_mode, name, system_turns)
    root = Path(cfg.image_root)
    if not root.is_dir():
        raise PreselError(f"--image-root {root}: not a directory; give the folder the training set's image paths "
                          "are relative to")
    from presel.io import sources

    rows = _load(cfg)
    images = sorted({r["image"] for r in rows if "image" in r})
    from presel.io.paths import ImagePathRefused

    for im in images:  # never copy or link a file outside the image root (a '..' path or a symlink out of it)
        try:
            sources.locate(im, root)
        except ImagePathRefused as e:
            rid = next(r["id"] for r in rows if r.get("image") == im)
            raise PreselError(f"{cfg.train}: record '{rid}': {e}") from None
    missing = [im for im in images if not sources.exists(sources.locate(im, root))]
    if missing:
        raise PreselError(f"{len(missing)} of {len(images)} images of {cfg.train} are missing under {root} "
                          f"(first: {missing[0]}); fix --image-root or the image paths")
    # images inside Parquet/Arrow tables or tar shards become files: <container>/<row or member>.<ext>
    packed = {im: sources.export_name(im, root) for im in images if sources.split_ref(im)[0] is not None}
    if packed and cfg.to != "hf-datasets":  # (an hf-datasets export embeds the bytes as they are)
        if cfg.image_mode != "copy":
            raise PreselError(f"{cfg.train}: {len(packed)} images live inside tables or tar shards (e.g. "
                              f"{next(iter(packed))}); export them as files with --image-mode copy")
        rows = [dict(r, image=packed[r["image"]]) if r.get("image") in packed else r for r in rows]
    out = Path(out)
    out_abs = Path(os.path.abspath(out))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if cfg.image_mode != "none" and cfg.to != "hf-datasets":
            _place_images([im for im in images if im not in packed], root, tmp / IMAGE_DIR, cfg.image_mode)
            for im, name in packed.items():
                target = tmp / IMAGE_DIR / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(sources.read_bytes(sources.locate(im, root)))
            image_folder = out_abs / IMAGE_DIR
        else:
            image_folder = Path(os.path.abspath(root))
        info: dict[str, Any] = {"format": cfg.to, "records": len(rows), "images": len(images), "unpacked": len(packed),
                                "text_only": sum(1 for r in rows if "image" not in r), "image_mode": cfg.image_mode}
        if cfg.to == "hf-datasets":
            info["image_mode"] = "embedded"
            write_hf_dataset(tmp / cfg.name, rows, root)
            info.update(dataset_path=str(out_abs / cfg.name),
                        trainer_args=f"datasets.load_from_disk('{out_abs / cfg.name}')")
        elif cfg.to == "llava":
            write_llava_json(tmp / "train.json", rows, system=cfg.system_turns)
            info["system_turns"] = cfg.system_turns
            info.update(data_path=str(out_abs / "train.json"), image_folder=str(image_folder),
                        trainer_args=f"--data_path {out_abs / 'train.json'} --image_folder {image_folder}")
        else:
            if cfg.image_mode == "none":
                mapped = [dict(r, image=str(image_folder / r["image"])) if "image" in r else r for r in rows]
            else:
                mapped = [dict(r, image=f"{IMAGE_DIR}/{r['image']}") if "image" in r else r for r in rows]
            file_name = f"{cfg.name}.json"
            write_sharegpt_json(tmp / file_name, mapped)
            write_json(tmp / "dataset_info.json", {cfg.name: llama_factory_entry(file_name)})
            info.update(dataset=cfg.name, dataset_dir=str(out_abs), file=str(out_abs / file_name),
                        trainer_args=f"dataset_dir: {out_abs}\ndataset: {cfg.name}\nmedia_dir: {out_abs}")
        write_json(tmp / "handoff.json", info)
        write_json(tmp / "config.json", resolved_config("prepare-export", cfg))
    return info
