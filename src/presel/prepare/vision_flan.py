"""``presel prepare vision-flan``: ``annotation_191-task_1k.json`` -> a pool with task = ``task_name``.

Ids in the released file are not unique, so the kept id is the list position (``"0"``, ``"1"``, ...; the
original ``id`` is ``orig_id``), as PreSel's ``unique_idx``. Records with an empty answer are kept and
counted (``summary.json``: ``empty_answers``); records without an image are counted and dropped.
Outputs as :mod:`presel.prepare.llava665k`: ``pool.jsonl``, ``annotations.json``, ``tasks.json``,
``summary.json``, ``config.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from presel.errors import PreselError
from presel.prepare.common import (
    PoolWriter,
    check_image_root,
    check_record,
    check_turns,
    iter_json_list,
    missing_images,
)

STAGE = "prepare-vision-flan"
_FIX = "the file must be Vision-FLAN's annotation_191-task_1k.json format (a list of {id, image, task_name, conversations})"


@dataclass
class VisionFlanConfig:
    """Settings of ``presel prepare vision-flan``.

    annotations: ``annotation_191-task_1k.json``.
    image_root: ``images_191task_1k/`` (the folder the ``image`` names are relative to).
    check_images: count the image files missing under ``image_root`` (listed in summary.json).
    """

    annotations: str
    image_root: str
    check_images: bool = False

    def __post_init__(self) -> None:
        self.annotations = str(self.annotations)
        self.image_root = str(self.image_root)


def prepare_vision_flan(annotations: str | os.PathLike, image_root: str | os.PathLike, out: str | os.PathLike, *,
                        check_images: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Prepare the Vision-FLAN 191-task file as a pool in ``out``; return the summary (also ``summary.json``)."""
    from presel.config import resolved_config
    from presel.io.atomic import atomic_dir, write_json

    cfg = VisionFlanConfig(str(annotations), str(image_root), check_images)
    root = check_image_root(cfg.image_root)
    no_image = 0
    empty: list[str] = []
    n_empty = 0
    orig_ids: dict[str, int] = {}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        w = PoolWriter(tmp)
        try:
            for p, rec in iter_json_list(cfg.annotations):
                where = f"{cfg.annotations} record {p}"
                check_record(rec, where, fix=_FIX)
                task = rec.get("task_name")
                if not isinstance(task, str) or not task.strip():
                    raise PreselError(f"{where} (id {rec['id']!r}): missing 'task_name'; every Vision-FLAN record "
                                      f"names its task; {_FIX}")
                image = rec.get("image")
                if image is None or image == "":
                    no_image += 1
                    continue
                if not isinstance(image, str):
                    raise PreselError(f"{where} (id {rec['id']!r}): 'image' must be a relative path string; {_FIX}")
                check_turns(rec, where, fix=_FIX)
                conv = rec["conversations"]
                if not any(t["value"].strip() for t in conv[1::2]):
                    n_empty += 1
                    if len(empty) < 20:
                        empty.append(str(p))
                oid = str(rec["id"])
                orig_ids[oid] = orig_ids.get(oid, 0) + 1
                new_id = str(p)
                head = {k: v for k, v in rec.items() if k != "conversations"}
                w.add({"id": new_id, "image": image, "task": task, "orig_id": rec["id"]},
                      {**head, "id": new_id, "orig_id": rec["id"], "task": task}, conv)
        except BaseException:
            w.abort()
            raise
        w.close()
        if w.n == 0:
            raise PreselError(f"{cfg.annotations}: no image records; nothing to select from")
        order = list(w.task_records)  # dict insertion order = first-seen order, as PreSel's task_names.json
        tasks = w.tasks_json(order)
        summary: dict[str, Any] = {
            "dataset": "vision-flan",
            "annotations": cfg.annotations,
            "image_root": str(root),
            "records_in_file": w.n + no_image,
            "no_image_dropped": no_image,
            "image_records": w.n,
            "distinct_images": len(w.images),
            "n_tasks": len(order),
            "tasks": {t: v["records"] for t, v in tasks["tasks"].items()},
            "empty_answers": {"count": n_empty, "first_ids": empty},
            "duplicate_orig_ids": sum(1 for c in orig_ids.values() if c > 1),
        }
        if cfg.check_images:
            n_missing, first = missing_images(root, w.images)
            summary["missing_images"] = {"count": n_missing, "first": first}
        write_json(tmp / "tasks.json", tasks)
        write_json(tmp / "summary.json", summary)
        write_json(tmp / "config.json", resolved_config(STAGE, cfg))
    return summary
