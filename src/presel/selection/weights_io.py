"""Task weights: read a weights file and check it against the pool's tasks.

A weights file is a JSON object ``task -> number`` or ``task -> {"score", "weight", "n"}`` (what
``presel weights`` writes); a top-level ``{"tasks": {...}}`` wrapper is accepted too. Weights are
normalised to sum 1.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from presel.errors import PreselError


def read_weights_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw ``task -> weight`` mapping of a weights JSON file."""
    from presel.io.manifest import read_json_file

    path = Path(path)
    data = read_json_file(path, missing="weights file not found; check --weights (or pass --task-weights uniform/size)",
                          fix="fix the weights file")
    if isinstance(data, dict) and isinstance(data.get("tasks"), dict):
        data = data["tasks"]
    if not isinstance(data, dict) or not data:
        raise PreselError(f"{path}: a weights file must be a non-empty JSON object task -> weight "
                          '(a number or {"score", "weight", "n"})')
    return data


def normalise_task_weights(raw: Mapping[str, Any], tasks: Sequence[str], *, source: str = "weights") -> dict[str, float]:
    """Check ``raw`` against the pool's ``tasks`` and return weights summing to 1 (in ``tasks`` order)."""
    pool_tasks = list(tasks)
    known = set(pool_tasks)
    out: dict[str, float] = {}
    for task, v in raw.items():
        task = str(task)
        if task not in known:
            shown = ", ".join(sorted(known)[:10]) + (", ..." if len(known) > 10 else "")
            raise PreselError(f"{source}: unknown task '{task}': it is not a task of the pool (tasks: {shown}); "
                              "fix the task name in the weights file or the pool's task assignment")
        w = v.get("weight") if isinstance(v, Mapping) else v
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise PreselError(f"{source}: task '{task}' has weight {w!r}; a weight must be a number "
                              '(task -> number or task -> {"weight": number})')
        w = float(w)
        if not math.isfinite(w) or w < 0:
            raise PreselError(f"{source}: task '{task}' has weight {w}; weights must be finite and >= 0; "
                              "recompute the task weights (presel weights) or fix the file")
        out[task] = w
    missing = [t for t in pool_tasks if t not in out]
    if missing:
        raise PreselError(f"{source}: no weight for pool task '{missing[0]}'"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                          + "; every pool task needs a weight: add it to the weights file or pass --task-weights uniform/size")
    total = sum(out.values())
    if total <= 0:
        raise PreselError(f"{source}: all task weights are 0 (e.g. task '{pool_tasks[0]}'); at least one must be > 0")
    if not math.isfinite(total):  # e.g. 1e308 + 1e308: the weights cannot be normalised
        big = max(out, key=lambda t: out[t])
        raise PreselError(f"{source}: task weights sum to {total} (task '{big}' has {out[big]}), too large to "
                          "normalise; scale the weights down (only their ratios matter)")
    return {t: out[t] / total for t in pool_tasks}
