"""Step 1.1 of PreSel: the reference set, a seeded random sample stratified by task.

``protocol: paper`` (default): ``floor(fraction * distinct pool images)`` images in total, an image shared
by several tasks counted once; the total is split over the tasks in proportion to their distinct images
(largest remainder, at least ``min_per_task``) and each task draws its share among the images no earlier
task (sorted order) drew. So with a 15% budget the new picks are exactly 10% of the distinct images.
``protocol: official`` (the authors' code, https://github.com/bardisafa/PreSel): per task
``max(min_per_task, floor(fraction * records of the task))`` records, drawn among the task's records.
``--from-file``: the authors' released split (records by ``unique_idx``) instead of a draw
(:func:`reference_from_file`).

Only these images get instructions up front (annotate them, then ``presel score``); selection later
excludes them and counts them in the budget (``presel select --reference ref/reference.jsonl``).
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from presel.errors import PreselError
from presel.records import Pool, PoolRecord, image_key


@dataclass(frozen=True)
class ReferenceConfig:
    """fraction: share of the distinct pool images (``protocol: official``: of each task's records),
    ``0 < f <= 1``, floored; min_per_task: at least this many per task (capped at the task's size); seed:
    sampling seed; protocol: paper | official (see the module doc); from_file: the authors' released split
    (records by ``unique_idx``, :func:`reference_from_file`) instead of a draw."""

    fraction: float = 0.05
    seed: int = 0
    min_per_task: int = 1
    protocol: str = "paper"
    from_file: str | None = None

    def __post_init__(self) -> None:
        from presel.protocol import check_protocol

        check_protocol(self.protocol)
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) or not 0 < self.fraction <= 1:
            raise PreselError(f"fraction={self.fraction!r} must be a number in (0, 1], e.g. 0.05 for 5%")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise PreselError(f"seed={self.seed!r} must be an integer >= 0")
        if isinstance(self.min_per_task, bool) or not isinstance(self.min_per_task, int) or self.min_per_task < 0:
            raise PreselError(f"min_per_task={self.min_per_task!r} must be an integer >= 0")


def _task_rng(seed: int, task: str):
    import numpy as np

    return np.random.default_rng([seed, zlib.crc32(task.encode("utf-8"))])


def task_quota(n_images: int, config: ReferenceConfig) -> int:
    """How many reference images a task with ``n_images`` distinct images gets."""
    return min(n_images, max(config.min_per_task, math.floor(config.fraction * n_images + 1e-9)))


def sample_reference(pool: Pool, config: ReferenceConfig | None = None) -> list[PoolRecord]:
    """The reference records, in pool order (see the module doc for each protocol).

    ``paper``: one record per drawn image (the drawing task's first record of it). ``official``: records.
    Each task's draw depends only on the seed and the task name (and, under ``paper``, on the images
    earlier tasks drew and the share it is given).
    """
    config = config or ReferenceConfig()
    if config.protocol == "official":
        chosen = _sample_records(pool, config)
    else:
        chosen = _sample_images(pool, config)
    index = pool.by_id()
    chosen.sort(key=lambda r: index[r.id])
    return chosen


def _sample_records(pool: Pool, config: ReferenceConfig) -> list[PoolRecord]:
    per_task: dict[str, list[PoolRecord]] = {}
    for rec in pool.records:
        per_task.setdefault(rec.task, []).append(rec)
    chosen: list[PoolRecord] = []
    for task in sorted(per_task):
        recs = per_task[task]
        order = _task_rng(config.seed, task).permutation(len(recs))
        chosen.extend(recs[i] for i in order[:task_quota(len(recs), config)])
    return chosen


def _sample_images(pool: Pool, config: ReferenceConfig) -> list[PoolRecord]:
    import numpy as np

    from presel.selection.budget import allocate

    per_task: dict[str, dict[str, PoolRecord]] = {}
    for rec in pool.records:
        per_task.setdefault(rec.task, {}).setdefault(rec.image_key, rec)
    names = sorted(per_task)
    n_distinct = len({k for imgs in per_task.values() for k in imgs})
    sizes = np.array([len(per_task[t]) for t in names], dtype=np.int64)
    total = math.floor(config.fraction * n_distinct + 1e-9)
    share = allocate(total, sizes.astype(np.float64), sizes)
    share = np.minimum(sizes, np.maximum(share, config.min_per_task))
    orders = {t: [list(per_task[t])[i] for i in _task_rng(config.seed, t).permutation(len(per_task[t]))] for t in names}
    taken: set[str] = set()
    chosen: list[PoolRecord] = []
    cursor = dict.fromkeys(names, 0)

    def draw(t: str, k: int) -> int:
        got = 0
        order = orders[t]
        while got < k and cursor[t] < len(order):
            key = order[cursor[t]]
            cursor[t] += 1
            if key not in taken:
                taken.add(key)
                chosen.append(per_task[t][key])
                got += 1
        return got

    short = 0
    for t, k in zip(names, share.tolist()):
        short += k - draw(t, k)
    while short > 0:  # a task whose images earlier tasks took: its share goes to tasks with images left
        free = np.array([sum(1 for key in orders[t][cursor[t]:] if key not in taken) for t in names], dtype=np.int64)
        if free.sum() == 0:
            break
        extra = allocate(min(short, int(free.sum())), sizes.astype(np.float64), free)
        for t, k in zip(names, extra.tolist()):
            short -= draw(t, k)
    return chosen


def _orig_id(rec: PoolRecord) -> str | None:
    v = (rec.extra or {}).get("orig_id")
    return None if v is None else str(v)


def _mismatch(rec: dict[str, Any], pr: PoolRecord) -> str | None:
    """Why split record ``rec`` is not pool record ``pr`` (by image, then original id), or None."""
    if isinstance(rec.get("image"), str) and image_key(rec["image"]) != pr.image_key:
        return f"image {rec['image']!r} but the pool record (id '{pr.id}') has image {pr.image!r}"
    oid = _orig_id(pr)
    if rec.get("id") is not None and oid is not None and str(rec["id"]) != oid:
        return f"id {rec['id']!r} but the pool record (id '{pr.id}') has orig_id {oid!r}"
    return None


def reference_from_file(pool: Pool, path: str | os.PathLike) -> list[PoolRecord]:
    """The records of ``pool`` named by an authors' released split (``round1_665k_notext.json``-shaped).

    The file is a JSON list of records keyed by ``unique_idx``: the record's position in
    ``llava_v1_5_mix665k_notext_add_idx.json``, i.e. among the image records of the 665K file, which is
    the position in a pool written by ``presel prepare llava665k`` (ids there are positions in the
    original file). When the split's records carry ``image``/``id`` they are checked against the pool
    record; if that numbering does not fit, the original-file numbering (pool id ``str(unique_idx)``) is
    tried. Pool order, one record per ``unique_idx`` (repeats are an error).
    """
    from presel.io.jsonlist import iter_json_list

    src = Path(path)
    if not src.is_file():
        raise PreselError(f"{path}: no such file; pass the authors' reference split (round1_665k_notext.json)")
    fix = ("the file must be a JSON list of records with 'unique_idx' (the index in "
           "llava_v1_5_mix665k_notext_add_idx.json), e.g. the authors' round1_665k_notext.json")
    entries: list[tuple[int, int, dict[str, Any]]] = []
    seen: dict[int, int] = {}
    for p, rec in iter_json_list(src):
        where = f"{path} record {p}"
        if not isinstance(rec, dict) or "unique_idx" not in rec:
            raise PreselError(f"{where}: expected an object with 'unique_idx'; {fix}")
        u = rec["unique_idx"]
        if isinstance(u, bool) or not isinstance(u, int) or u < 0:
            raise PreselError(f"{where}: unique_idx {u!r} must be an integer >= 0; {fix}")
        if u in seen:
            raise PreselError(f"{where}: unique_idx {u} repeats record {seen[u]}; a split names each record once")
        seen[u] = p
        entries.append((p, u, rec))
    if not entries:
        raise PreselError(f"{path}: no records; {fix}")
    n = len(pool.records)
    problem = None
    for p, u, rec in entries:  # the text-free numbering: position among the pool's (image) records
        if u >= n:
            problem = (f"{path} record {p}: unique_idx {u} is out of range: the pool {pool.source} has {n} records "
                       "(unique_idx 0..{})".format(n - 1))
            break
        why = _mismatch(rec, pool.records[u])
        if why:
            problem = f"{path} record {p}: unique_idx {u} names {why}"
            break
    if problem is None:
        return [pool.records[u] for u in sorted(seen)]
    by_id = pool.by_id()  # the original-file numbering: presel's llava665k ids
    hits = []
    for _p, u, rec in entries:
        i = by_id.get(str(u))
        if i is None or _mismatch(rec, pool.records[i]):
            raise PreselError(f"{problem}; nor is it pool id '{u}' (original-file position); the pool must be "
                              "prepared with `presel prepare llava665k` from the llava_v1_5_mix665k.json the split "
                              "was made from")
        hits.append(i)
    return [pool.records[i] for i in sorted(hits)]


def reference_to_dir(pool: Pool, out: str | os.PathLike, *, fraction: float = 0.05, seed: int = 0,
                     min_per_task: int = 1, overwrite: bool = False, protocol: str = "paper",
                     from_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """Sample the reference set of ``pool`` and write ``out/`` atomically:

    * ``reference.jsonl``: ``id``, ``image``, ``task`` (the images to annotate; ``presel select --reference``);
    * ``reference_llava.json``: a LLaVA skeleton (``id``, ``image``, ``task``, ``conversations: []``) to fill in;
    * ``summary.json``: per task distinct images and reference images; totals;
    * ``config.json``.

    Returns the summary.
    """
    from presel.config import resolved_config
    from presel.io.atomic import atomic_dir, dumps_json, write_json, write_jsonl

    config = ReferenceConfig(fraction=fraction, seed=seed, min_per_task=min_per_task, protocol=protocol,
                             from_file=None if from_file is None else str(from_file))
    chosen = sample_reference(pool, config) if from_file is None else reference_from_file(pool, from_file)
    images: dict[str, set[str]] = {}
    records: dict[str, int] = {}
    for rec in pool.records:
        images.setdefault(rec.task, set()).add(rec.image_key)
        records[rec.task] = records.get(rec.task, 0) + 1
    counts: dict[str, int] = {}
    for rec in chosen:
        counts[rec.task] = counts.get(rec.task, 0) + 1
    tasks = {t: {"images": len(images[t]), "records": records[t], "reference": counts.get(t, 0)} for t in sorted(images)}
    summary = {"tasks": tasks, "total": {"images": len(pool.distinct_images()), "records": len(pool.records),
                                         "reference": len(chosen), "tasks": len(tasks),
                                         "unit": "records" if protocol == "official" else "images"},
               "fraction": config.fraction, "seed": config.seed, "protocol": config.protocol, "pool": str(pool.source)}
    if from_file is not None:
        summary["from_file"] = str(from_file)
        summary["total"]["unit"] = "records"
    rows = [{"id": r.id, "image": r.image, "task": r.task} for r in chosen]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_jsonl(tmp / "reference.jsonl", rows)
        (tmp / "reference_llava.json").write_text(
            dumps_json([{**row, "conversations": []} for row in rows]), encoding="utf-8")
        write_json(tmp / "summary.json", summary)
        write_json(tmp / "config.json", resolved_config("reference", config, pool=str(pool.source),
                                                        image_root=str(pool.image_root)))
    return summary


def read_reference(path: str | os.PathLike) -> list[str]:
    """The ids of a reference set (``reference.jsonl`` or its folder)."""
    from presel.io.manifest import read_id_list

    p = Path(path)
    if p.is_dir():
        p = p / "reference.jsonl"
    if not p.exists():
        raise PreselError(f"{path}: no reference.jsonl; pass the output of presel reference")
    return read_id_list(p)
