"""Step 1.1 of PreSel: the reference set, a seeded random fraction of the distinct images of each task.

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
from presel.records import Pool, PoolRecord


@dataclass(frozen=True)
class ReferenceConfig:
    """fraction: share of each task's distinct images, ``0 < f <= 1`` (floored per task);
    min_per_task: at least this many images per task (capped at the task's size); seed: sampling seed."""

    fraction: float = 0.05
    seed: int = 0
    min_per_task: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) or not 0 < self.fraction <= 1:
            raise PreselError(f"fraction={self.fraction!r} must be a number in (0, 1], e.g. 0.05 for 5% of each task")
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
    """The reference records: per task (in sorted task order) a seeded sample of its distinct images not
    already taken by another task, one record per image (the task's first record of it); pool order.

    Each task's draw depends only on the seed and the task name, so adding a task leaves the others alone
    (unless they share images).
    """
    config = config or ReferenceConfig()
    per_task: dict[str, dict[str, PoolRecord]] = {}
    for rec in pool.records:
        per_task.setdefault(rec.task, {}).setdefault(rec.image_key, rec)
    taken: set[str] = set()
    chosen: list[PoolRecord] = []
    for task in sorted(per_task):
        images = per_task[task]
        k = task_quota(len(images), config)
        free = [key for key in images if key not in taken]
        order = _task_rng(config.seed, task).permutation(len(free))
        pick = [free[i] for i in order[:k]]
        taken.update(pick)
        chosen.extend(images[key] for key in pick)
    index = pool.by_id()
    chosen.sort(key=lambda r: index[r.id])
    return chosen


def reference_to_dir(pool: Pool, out: str | os.PathLike, *, fraction: float = 0.05, seed: int = 0,
                     min_per_task: int = 1, overwrite: bool = False) -> dict[str, Any]:
    """Sample the reference set of ``pool`` and write ``out/`` atomically:

    * ``reference.jsonl``: ``id``, ``image``, ``task`` (the images to annotate; ``presel select --reference``);
    * ``reference_llava.json``: a LLaVA skeleton (``id``, ``image``, ``task``, ``conversations: []``) to fill in;
    * ``summary.json``: per task distinct images and reference images; totals;
    * ``config.json``.

    Returns the summary.
    """
    from presel.config import resolved_config
    from presel.io.atomic import atomic_dir, dumps_json, write_json, write_jsonl

    config = ReferenceConfig(fraction=fraction, seed=seed, min_per_task=min_per_task)
    chosen = sample_reference(pool, config)
    images: dict[str, set[str]] = {}
    for rec in pool.records:
        images.setdefault(rec.task, set()).add(rec.image_key)
    counts: dict[str, int] = {}
    for rec in chosen:
        counts[rec.task] = counts.get(rec.task, 0) + 1
    tasks = {t: {"images": len(images[t]), "reference": counts.get(t, 0)} for t in sorted(images)}
    summary = {"tasks": tasks, "total": {"images": len(pool.distinct_images()), "reference": len(chosen),
                                         "tasks": len(tasks)},
               "fraction": config.fraction, "seed": config.seed, "pool": str(pool.source)}
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
