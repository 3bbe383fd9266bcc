"""What both selection protocols share (a leaf of :mod:`presel.selection.select` and
:mod:`presel.selection.official`): the result type and the task weights."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from presel.errors import PreselError

if TYPE_CHECKING:
    from presel.selection.select import SelectConfig


@dataclass
class SelectionResult:
    selection: dict[str, list]  # columns, one row per chosen image (reference rows included)
    assignments: dict[str, list]  # columns, one row per item (task, image)
    summary: dict[str, Any]
    config: SelectConfig

    @property
    def selected_ids(self) -> list[str]:
        return [i for i, s in zip(self.selection["id"], self.selection["source"]) if s == "selected"]


def task_weights(cfg: SelectConfig, tasks: list[Any], weights: Mapping[str, Any] | None, source: str) -> np.ndarray:
    """Each task's weight (in ``tasks`` order) under ``cfg.task_weights``: uniform, by size, or the IRS weights."""
    names = [t.name for t in tasks]
    if cfg.task_weights == "uniform":
        return np.full(len(tasks), 1.0 / len(tasks))
    if cfg.task_weights == "size":
        n = np.array([len(t.ids) for t in tasks], dtype=np.float64)
        return n / n.sum()
    if weights is None:
        raise PreselError("task_weights='irs' needs task weights (--weights FILE from `presel weights`); "
                          "or pass --task-weights uniform or size")
    from presel.selection.weights_io import normalise_task_weights

    w = normalise_task_weights(weights, names, source=source)
    return np.array([w[n] for n in names], dtype=np.float64)
