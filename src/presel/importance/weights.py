"""Step 1.5-1.6 of PreSel: task scores and task weights from IRS.

``score(T) = mean IRS over T's scored reference samples``; ``weight(T) = softmax(-score / tau)`` over the
``M`` tasks, ``tau = 1 / sqrt(M)`` by default. A low IRS (the question matters) gives a high weight.
The weights file maps each task to ``{"score", "weight", "n"}``; ``presel select --weights`` reads it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from presel.errors import PreselError


@dataclass
class WeightsConfig:
    """tau: softmax temperature, or 'auto' for 1/sqrt(number of tasks)."""

    tau: float | str | None = "auto"

    def __post_init__(self) -> None:
        tau = self.tau
        if isinstance(tau, str) and tau.strip().lower() != "auto":
            try:
                tau = float(tau)
            except ValueError:
                tau = self.tau
        if tau is None or (isinstance(tau, str) and tau.strip().lower() == "auto"):
            self.tau = "auto"
        elif isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
            raise PreselError(f"tau={self.tau!r} must be 'auto' (1/sqrt(M)) or a number > 0")
        else:
            self.tau = float(tau)

    @property
    def temperature(self) -> float | None:
        """The softmax temperature, None for auto."""
        return None if self.tau == "auto" else float(self.tau)


def _read_irs(source: Any) -> tuple[list[str], list[float], str, list[dict[str, Any]]]:
    """(tasks, irs values, description, rejected rows) from an IRS dir, a Parquet file, a pyarrow table or
    a dict of columns."""
    rejected: list[dict[str, Any]] = []
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        table_path = p / "irs.parquet" if p.is_dir() else p
        if not table_path.exists():
            raise PreselError(f"{source}: no IRS table (irs.parquet); pass the output folder of presel score")
        if p.is_dir() and (p / "rejected.jsonl").exists():
            from presel.io.manifest import iter_jsonl

            rejected = [rec for _, rec in iter_jsonl(p / "rejected.jsonl", fix="rescore with presel score")]
        from presel.io.manifest import read_parquet

        cols = read_parquet(table_path, what="--irs: the output folder of presel score, or its irs.parquet").to_pydict()
        desc = str(table_path)
    elif isinstance(source, Mapping):
        cols, desc = dict(source), "IRS table"
    else:  # a pyarrow table
        cols, desc = source.to_pydict(), "IRS table"
    for c in ("task", "irs"):
        if c not in cols:
            raise PreselError(f"{desc}: missing column '{c}'; an IRS table has id, task, loss_q, loss_noq, irs")
    irs = list(cols["irs"])
    for i, v in enumerate(irs):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            rid = cols["id"][i] if "id" in cols else None
            raise PreselError(f"{desc} row {i + 1}{f' (id {rid!r})' if rid is not None else ''}: irs={v!r} is not a "
                              "number; the irs column must hold numbers (rerun presel score)")
    return [str(t) for t in cols["task"]], irs, desc, rejected


def softmax_weights(scores: Mapping[str, float], tau: float | None = None) -> dict[str, float]:
    """``softmax(-score / tau)`` over the tasks (``tau`` None: ``1 / sqrt(M)``), computed stably."""
    if not scores:
        raise PreselError("no task scores to weight")
    if tau is None:
        tau = 1.0 / math.sqrt(len(scores))
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise PreselError(f"tau={tau!r} must be a number > 0 (or 'auto' for 1/sqrt(number of tasks))")
    z = {t: -s / tau for t, s in scores.items()}
    bad = next((t for t, v in z.items() if not math.isfinite(v)), None)
    if bad is not None:
        raise PreselError(f"task '{bad}': score {scores[bad]!r} / tau {tau!r} is too large to weight; IRS is a ratio of "
                          "two losses (near 1): rescore with presel score, or raise tau")
    top = max(z.values())
    e = {t: math.exp(v - top) for t, v in z.items()}
    total = math.fsum(e.values())
    return {t: v / total for t, v in e.items()}


def _mean(values: list[float]) -> float:
    """The exact mean of finite values, without overflowing on values near the float limit (1e308)."""
    try:
        return math.fsum(values) / len(values)
    except OverflowError:
        return math.fsum(v / len(values) for v in values)


def compute_weights(irs: Any, tau: float | None = None) -> dict[str, dict[str, Any]]:
    """Task score (mean IRS), weight and sample count per task, in sorted task order.

    ``irs``: an output folder of ``presel score``, an ``irs.parquet`` file, a pyarrow table or a dict of
    columns (``task``, ``irs``). ``tau``: softmax temperature, None for ``1/sqrt(M)``. A task whose
    reference samples were all rejected has no score: an error naming it.
    """
    tasks, values, desc, rejected = _read_irs(irs)
    by_task: dict[str, list[float]] = {}
    for t, v in zip(tasks, values):
        if v is None or not math.isfinite(float(v)):
            raise PreselError(f"{desc}: task '{t}' has a non-finite IRS ({v}); rescore with presel score")
        if v < 0:
            raise PreselError(f"{desc}: task '{t}' has a negative IRS ({v}); IRS is a ratio of two losses, never "
                              "negative: rescore with presel score")
        by_task.setdefault(t, []).append(float(v))
    lost = sorted({str(r.get("task")) for r in rejected if r.get("task") is not None} - set(by_task))
    if lost:
        raise PreselError(f"{desc}: task '{lost[0]}'" + (f" (and {len(lost) - 1} more)" if len(lost) > 1 else "")
                          + " has no scored reference sample (all rejected, see rejected.jsonl); fix those samples "
                          "and rescore, or give task weights yourself")
    if not by_task:
        raise PreselError(f"{desc}: no scored samples; nothing to weight")
    scores = {t: _mean(v) for t, v in sorted(by_task.items())}
    w = softmax_weights(scores, tau)
    return {t: {"score": scores[t], "weight": w[t], "n": len(by_task[t])} for t in scores}


def write_weights(path: str | os.PathLike, weights: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write ``task -> {score, weight, n}`` as sorted JSON, atomically."""
    from presel.io.atomic import write_json

    write_json(path, {t: dict(v) for t, v in weights.items()})
    return Path(path)
