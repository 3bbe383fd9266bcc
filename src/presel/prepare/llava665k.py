"""``presel prepare llava665k``: ``llava_v1_5_mix665k.json`` -> a pool with one of the paper's tasks per record.

* Text-only records (no ``image``: ShareGPT) are counted and dropped.
* Every kept record's id is its position in the original file (``"0"``, ``"1"``, ...; stable, unique;
  the original ``id`` is kept as ``orig_id``).
* The task comes from the authors' split files (``--splits DIR``, one JSON list per task, task = file stem)
  or from the built-in rules (:mod:`presel.prepare.rules`) and a source -> task table (YAML).
  With split files the rules still run and their agreement with the splits is reported.

Outputs (``out/``): ``pool.jsonl`` (id, image, task, conversations, orig_id, source), ``annotations.json``
(the LLaVA records with the new ids, for oracle instruction generation), ``tasks.json``, ``summary.json``,
``config.json``. The input is streamed (never decoded as a whole); with split files it is read twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from presel.errors import PreselError
from presel.prepare.common import (
    PoolWriter,
    check_image_root,
    check_record,
    check_turns,
    first_human,
    iter_json_list,
    missing_images,
)
from presel.prepare.rules import EXPECTED_702, LLAVA_SUBSOURCES, TaskTable, load_task_table

STAGE = "prepare-llava665k"
SPLIT_INDEX = ("auto", "original", "notext")
NO_RULE = "(no rule)"
_FIX = "the file must be LLaVA's llava_v1_5_mix665k.json format (a list of {id, image, conversations})"


@dataclass
class Llava665kConfig:
    """Settings of ``presel prepare llava665k``.

    annotations: the LLaVA JSON list (``llava_v1_5_mix665k.json``).
    image_root: the folder its ``image`` paths are relative to (``coco/``, ``gqa/``, ... inside).
    splits: a folder of split files (``*.json``: one JSON list per task, task = file stem), or None.
    tasks_config: the source -> task YAML (None: the shipped 10-task table).
    split_index: what ``unique_idx`` in split files counts: ``original`` (position in the annotations
        file), ``notext`` (position after dropping text-only records, as PreSel's preprocessing numbers
        them) or ``auto`` (whichever numbering matches the records' id and image).
    check_images: count the image files missing under ``image_root`` (listed in summary.json).
    reference_split: the authors' released reference split (``round1_665k_notext.json``: records by
        ``unique_idx``), written as ``out/reference/`` (what ``presel reference --from-file`` writes).
    """

    annotations: str
    image_root: str
    splits: str | None = None
    tasks_config: str | None = None
    split_index: str = "auto"
    check_images: bool = False
    reference_split: str | None = None

    def __post_init__(self) -> None:
        self.annotations = str(self.annotations)
        self.reference_split = None if self.reference_split is None else str(self.reference_split)
        self.image_root = str(self.image_root)
        self.splits = None if self.splits is None else str(self.splits)
        self.tasks_config = None if self.tasks_config is None else str(self.tasks_config)
        if self.split_index not in SPLIT_INDEX:
            raise PreselError(f"split_index={self.split_index!r} must be one of {', '.join(SPLIT_INDEX)}")


# ----------------------------------------------------------------------------------------------- splits

_NUM = re.compile(r"(\d+)")


def _natural(p: Path) -> list[Any]:
    return [int(s) if s.isdigit() else s for s in _NUM.split(p.stem)]


def _content_key(rec: dict[str, Any]) -> tuple[str, str, bytes]:
    conv = json.dumps(rec.get("conversations"), sort_keys=True, ensure_ascii=False).encode("utf-8")
    return str(rec.get("id")), str(rec.get("image", "")), hashlib.sha1(conv).digest()[:12]


@dataclass(slots=True)
class _Entry:
    task: int
    id: str | None
    image: str | None
    file: int
    pos: int


class Splits:
    """The authors' split files: ``unique_idx`` -> task, or (for records without it) content -> task."""

    def __init__(self, folder: str | os.PathLike):
        folder = Path(folder)
        if not folder.is_dir():
            raise PreselError(f"--splits {folder}: not a directory; give the folder holding the per-task JSON "
                              "files (e.g. file1_665.json ... file10_665.json)")
        self.files = sorted(folder.glob("*.json"), key=_natural)
        if not self.files:
            raise PreselError(f"--splits {folder}: no *.json split files found; each task is one JSON list of records")
        self.tasks = [f.stem for f in self.files]
        self.by_idx: dict[int, _Entry] = {}
        self.by_key: dict[tuple[str, str, bytes], tuple[int, int, int]] = {}  # key -> (task, file, pos)
        self.by_idimg: dict[tuple[str, str], tuple[int, int, int]] = {}  # (id, image) -> (task, file, pos)
        self.file_records = [0] * len(self.files)
        for fi, f in enumerate(self.files):
            for pos, rec in iter_json_list(f, flag="--splits"):
                where = f"{f} record {pos}"
                if not isinstance(rec, dict):
                    raise PreselError(f"{where}: expected a JSON object (a LLaVA record with unique_idx), "
                                      f"got {type(rec).__name__}; split files are JSON lists of records")
                self.file_records[fi] += 1
                if "unique_idx" in rec:
                    u = rec["unique_idx"]
                    if isinstance(u, str) and u.isdigit():
                        u = int(u)
                    if not isinstance(u, int) or isinstance(u, bool) or u < 0:
                        raise PreselError(f"{where}: unique_idx {u!r} must be a non-negative integer "
                                          "(the record's position in the annotations file)")
                    old = self.by_idx.get(u)
                    if old is not None:
                        raise PreselError(self._overlap(where, f"unique_idx {u}", old.file, old.pos, fi))
                    img = rec.get("image")
                    self.by_idx[u] = _Entry(fi, None if rec.get("id") is None else str(rec["id"]),
                                            img if isinstance(img, str) else None, fi, pos)
                else:
                    if rec.get("id") is None or not isinstance(rec.get("image"), str):
                        raise PreselError(f"{where}: a split record needs 'unique_idx', or 'id' and 'image' (plus "
                                          "'conversations' when one image has several records) to be matched to "
                                          "the annotations; add unique_idx")
                    key = _content_key(rec) if rec.get("conversations") is not None else (str(rec["id"]), rec["image"])
                    table = self.by_key if len(key) == 3 else self.by_idimg
                    old_k = table.get(key)
                    if old_k is not None and old_k[0] != fi:
                        msg = self._overlap(where, f"record id {rec['id']!r} (image {rec['image']})", old_k[1], old_k[2], fi)
                        if len(key) == 2:
                            msg += ("; id + image name an image, not a record (COCO images have records from several "
                                    "sources), so give these split records 'conversations' or 'unique_idx'")
                        raise PreselError(msg)
                    table.setdefault(key, (fi, fi, pos))

    def task_by_content(self, rec: dict[str, Any]) -> int:
        """Task of an annotation record matched by content (id, image, conversations) or by (id, image); -1 if none."""
        if self.by_key:
            hit = self.by_key.get(_content_key(rec))
            if hit is not None:
                return hit[0]
        if self.by_idimg:
            hit = self.by_idimg.get((str(rec.get("id")), rec.get("image")))
            if hit is not None:
                return hit[0]
        return -1

    def _overlap(self, where: str, what: str, ofile: int, opos: int, fi: int) -> str:
        if ofile == fi:
            return (f"{where}: {what} appears twice in {self.files[fi].name} (first as record {opos}); "
                    "remove the duplicate")
        return (f"{where}: {what} is also in {self.files[ofile]} (record {opos}), task '{self.tasks[ofile]}'; "
                "a record belongs to exactly one task, so the split files must not overlap")


class _Hypothesis:
    """Task per image record if ``unique_idx`` counts one way (original or notext positions)."""

    def __init__(self, name: str):
        self.name = name
        self.tasks = array("i")
        self.seen = 0
        self.matched = 0
        self.first_bad: str | None = None

    def check(self, splits: Splits, u: int, rec: dict[str, Any] | None, image: str | None) -> int:
        e = splits.by_idx.get(u)
        if e is None:
            return -1
        self.seen += 1
        ok = rec is not None and image is not None
        if ok and e.id is not None:
            ok = e.id == str(rec.get("id"))
        if ok and e.image is not None:
            ok = e.image == image
        if ok:
            self.matched += 1
        elif self.first_bad is None:
            found = "a text-only record" if image is None else f"id {rec.get('id')!r}, image {image}"
            self.first_bad = (f"{splits.files[e.file]} record {e.pos}: unique_idx {u} (id {e.id!r}, image "
                              f"{e.image}) but {self.name} position {u} of the annotations is {found}")
        return e.task


def _resolve_splits(cfg: Llava665kConfig, splits: Splits, table: TaskTable) -> tuple[array, str]:
    """Pass 1: read the annotations once, match split records, pick the numbering; task per image record."""
    orig, notext = _Hypothesis("original"), _Hypothesis("text-free")
    by_content = array("i")
    positions = array("q")  # original position of each image record
    q = 0
    n_records = 0
    for p, rec in iter_json_list(cfg.annotations):
        n_records += 1
        image = rec.get("image") if isinstance(rec, dict) else None
        if not isinstance(image, str) or not image:
            if splits.by_idx:
                orig.check(splits, p, rec if isinstance(rec, dict) else None, None)
            continue
        positions.append(p)
        if splits.by_idx:
            orig.tasks.append(orig.check(splits, p, rec, image))
            notext.tasks.append(notext.check(splits, q, rec, image))
        if splits.by_key or splits.by_idimg:
            by_content.append(splits.task_by_content(rec))
        q += 1
    n_idx = len(splits.by_idx)
    if splits.by_idx:
        beyond = [u for u in splits.by_idx if u >= n_records]
        if beyond:
            e = splits.by_idx[min(beyond)]
            first_beyond = f"{splits.files[e.file]} record {e.pos}: unique_idx {min(beyond)}"
        verifiable = any(e.id is not None or e.image is not None for e in splits.by_idx.values())
        ok = {h.name: h for h in (orig, notext) if h.seen == n_idx and h.matched == n_idx}
        want = {"original": "original", "notext": "text-free"}.get(cfg.split_index)
        if want is not None:
            chosen = ok.get(want)
            if chosen is None:
                h = orig if want == "original" else notext
                detail = h.first_bad or (f"{n_idx - h.seen} unique_idx value(s) point past the end of the file"
                                         + (f" (first: {first_beyond})" if beyond else ""))
                raise PreselError(f"--splits {cfg.splits}: the split records do not match the annotations with "
                                  f"--split-index {cfg.split_index}: {detail}; check that the split files belong "
                                  f"to {cfg.annotations}, or try --split-index auto")
        else:
            if not verifiable and ok:
                raise PreselError(f"--splits {cfg.splits}: split records carry unique_idx but neither 'id' nor "
                                  "'image', so the numbering cannot be checked; pass --split-index original or notext")
            if len(ok) == 2:
                chosen = orig  # identical up to the last split record: no text-only record before it
            elif len(ok) == 1:
                chosen = next(iter(ok.values()))
            else:
                problems = [x for x in (orig.first_bad or notext.first_bad,) if x]
                if beyond:
                    problems.append(f"{len(beyond)} unique_idx value(s) are beyond the file's {n_records} records "
                                    f"(first: {first_beyond})")
                raise PreselError(f"--splits {cfg.splits}: unique_idx does not match the annotations in either "
                                  f"numbering (position in the file, or after dropping text-only records): "
                                  f"{'; '.join(problems) or 'no split record matched'}; the split files must come "
                                  f"from {cfg.annotations}")
        tasks = chosen.tasks
        index = "original" if chosen is orig else "notext"
        if by_content:
            for i, t in enumerate(by_content):
                if t >= 0:
                    if tasks[i] >= 0 and tasks[i] != t:
                        raise PreselError(f"--splits {cfg.splits}: {cfg.annotations} record {positions[i]} is in "
                                          f"'{splits.tasks[tasks[i]]}' by unique_idx and in '{splits.tasks[t]}' by "
                                          "content; the split files must not overlap")
                    tasks[i] = t
    else:
        tasks, index = by_content, "content"
    uncovered = [i for i, t in enumerate(tasks) if t < 0]
    if uncovered:
        raise PreselError(f"--splits {cfg.splits}: {len(uncovered)} of {len(tasks)} image records are in no split "
                          f"file (first: {cfg.annotations} record {positions[uncovered[0]]}); the split files must cover every image "
                          "record of the annotations, or drop --splits to use the built-in rules")
    return tasks, index


# ------------------------------------------------------------------------------------------------- main

def prepare_llava665k(annotations: str | os.PathLike, image_root: str | os.PathLike, out: str | os.PathLike, *,
                      splits: str | os.PathLike | None = None, tasks_config: str | os.PathLike | None = None,
                      split_index: str = "auto", check_images: bool = False, overwrite: bool = False,
                      reference_split: str | os.PathLike | None = None) -> dict[str, Any]:
    """Prepare ``llava_v1_5_mix665k.json`` as a pool in ``out``; return the summary (also ``summary.json``)."""
    from presel.config import resolved_config
    from presel.io.atomic import atomic_dir, write_json

    cfg = Llava665kConfig(str(annotations), str(image_root), None if splits is None else str(splits),
                          None if tasks_config is None else str(tasks_config), split_index, check_images,
                          None if reference_split is None else str(reference_split))
    if cfg.reference_split is not None and not Path(cfg.reference_split).is_file():
        raise PreselError(f"--reference-split {cfg.reference_split}: no such file; pass the authors' "
                          "round1_665k_notext.json")
    root = check_image_root(cfg.image_root)
    table = load_task_table(cfg.tasks_config)
    split_obj = Splits(cfg.splits) if cfg.splits is not None else None
    split_tasks, index = (None, None)
    if split_obj is not None:
        split_tasks, index = _resolve_splits(cfg, split_obj, table)

    text_only = 0
    sources: dict[str, int] = {}
    confusion: dict[str, dict[str, int]] = {}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        w = PoolWriter(tmp)
        try:
            q = 0
            for p, rec in iter_json_list(cfg.annotations):
                where = f"{cfg.annotations} record {p}"
                check_record(rec, where, fix=_FIX)
                image = rec.get("image")
                if image is None or image == "":
                    text_only += 1
                    continue
                if not isinstance(image, str):
                    raise PreselError(f"{where} (id {rec['id']!r}): 'image' must be a relative path string, got "
                                      f"{type(image).__name__}; {_FIX}")
                check_turns(rec, where, fix=_FIX)
                conv = rec["conversations"]
                source = table.source_of(image, first_human(rec), len(conv))
                if split_tasks is None:
                    if source is None:
                        raise PreselError(f"{where} (id {rec['id']!r}): no prefix rule matches image '{image}'; "
                                          f"add its folder under 'prefixes:' in a --tasks-config (see {table.source})")
                    task = table.task_of(source)
                else:
                    task = split_obj.tasks[split_tasks[q]]
                    rule_task = NO_RULE if source is None else table.task_of(source)
                    row = confusion.setdefault(task, {})
                    row[rule_task] = row.get(rule_task, 0) + 1
                src_name = source or NO_RULE
                sources[src_name] = sources.get(src_name, 0) + 1
                new_id = str(p)
                head = {k: v for k, v in rec.items() if k != "conversations"}
                w.add({"id": new_id, "image": image, "task": task, "orig_id": rec["id"], "source": src_name},
                      {**head, "id": new_id, "orig_id": rec["id"], "task": task}, conv)
                q += 1
        except BaseException:
            w.abort()
            raise
        w.close()
        if w.n == 0:
            raise PreselError(f"{cfg.annotations}: no image records ({text_only} text-only); nothing to select from")
        order = split_obj.tasks if split_obj is not None else table.task_order
        tasks = w.tasks_json(order)
        summary: dict[str, Any] = {
            "dataset": "llava665k",
            "annotations": cfg.annotations,
            "image_root": str(root),
            "records_in_file": w.n + text_only,
            "text_only_dropped": text_only,
            "image_records": w.n,
            "distinct_images": len(w.images),
            "task_source": "splits" if split_obj is not None else "rules",
            "tasks_config": table.source,
            "tasks": {t: v["records"] for t, v in tasks["tasks"].items()},
            "sources": dict(sorted(sources.items())),
            "check_702": _check_702(sources, text_only),
        }
        if split_obj is not None:
            summary["splits"] = _agreement(split_obj, confusion, index)
        if cfg.check_images:
            n_missing, first = missing_images(root, w.images)
            summary["missing_images"] = {"count": n_missing, "first": first}
        if cfg.reference_split is not None:
            summary["reference"] = _write_reference(tmp, root, cfg.reference_split)
        write_json(tmp / "tasks.json", tasks)
        write_json(tmp / "summary.json", summary)
        write_json(tmp / "config.json", resolved_config(STAGE, cfg))
    return summary


def _write_reference(tmp: Path, root: Path, split: str) -> dict[str, Any]:
    """``tmp/reference/`` from the authors' split over the pool just written; its per-task counts."""
    from presel.importance.reference import reference_to_dir
    from presel.io.manifest import read_pool

    pool = read_pool(tmp / "pool.jsonl", image_root=root, keep_extra=True)
    s = reference_to_dir(pool, tmp / "reference", protocol="official", from_file=split)
    return {"file": split, "records": s["total"]["reference"],
            "tasks": {t: v["reference"] for t, v in s["tasks"].items()}}


def _check_702(sources: dict[str, int], text_only: int) -> dict[str, Any]:
    """Rule counts against the exact #702 counts (meaningful on the real, complete file only)."""
    got = {k: v for k, v in sources.items() if k not in LLAVA_SUBSOURCES}
    got["llava_instruct_158k"] = sum(sources.get(s, 0) for s in LLAVA_SUBSOURCES)
    rows = {s: {"expected": n, "found": got.get(s, 0)} for s, n in EXPECTED_702.items()}
    rows["sharegpt_text_only"] = {"expected": 40_688, "found": text_only}
    return {"match": all(r["expected"] == r["found"] for r in rows.values()), "by_source": rows}


def _agreement(splits: Splits, confusion: dict[str, dict[str, int]], index: str | None) -> dict[str, Any]:
    confusion = {t: confusion[t] for t in splits.tasks if t in confusion}
    total = sum(sum(r.values()) for r in confusion.values())
    best = {t: max(sorted(r.items()), key=lambda kv: kv[1])[0] for t, r in confusion.items()}
    matched = sum(confusion[t][best[t]] for t in confusion)
    return {
        "dir": str(splits.files[0].parent),
        "files": {t: {"file": f.name, "records": n} for t, f, n in zip(splits.tasks, splits.files, splits.file_records)},
        "index": index,
        "agreement": {
            "best_rule_task": best,
            "records_agreeing": matched,
            "records": total,
            "rate": matched / total if total else 0.0,
            "confusion": {t: dict(sorted(r.items(), key=lambda kv: (-kv[1], kv[0]))) for t, r in confusion.items()},
        },
    }
