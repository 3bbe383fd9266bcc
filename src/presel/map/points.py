"""The points of the map: one per distinct pool image that has features, with what the stages said about it.

Read through :mod:`presel.report.data` (the same typed readers as the report): ``selection/assignments.parquet``
(task, cluster, rank, centrality, selected, reference; one row per task and image), ``selection/summary.json``
(task weights), ``dedup/`` (near-copy groups; the copies the selection dropped are points too), ``features/``
(the vectors). An image used by several tasks is one point, shown with the task that selected it (or its
first task) and the list of all its tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from presel.errors import PreselError
from presel.records import image_key

# status codes of a point (the page's legend uses the same order)
STATUS = ("not picked", "selected", "reference", "near-copy dropped")
NOT_PICKED, SELECTED, REFERENCE, DROPPED = range(4)


@dataclass
class Points:
    id: list[str] = field(default_factory=list)  # record id (or the image path of a dropped near-copy)
    image: list[str] = field(default_factory=list)
    task: list[int] = field(default_factory=list)  # index into tasks
    also: list[str] = field(default_factory=list)  # other tasks of the image, comma-separated
    cluster: list[int] = field(default_factory=list)  # -1: none
    rank: list[int] = field(default_factory=list)  # 1-based rank in the cluster among available images; 0: none
    central: list[float] = field(default_factory=list)  # neighbour centrality (nan: none)
    status: list[int] = field(default_factory=list)
    group: list[int] = field(default_factory=list)  # near-duplicate group; -1: none
    kept: list[str] = field(default_factory=list)  # the kept image of a dropped near-copy ("" otherwise)
    forced: list[bool] = field(default_factory=list)  # selected because the selection's include list named it
    feature_row: list[int] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)  # per task: the weight the selection used
    quota: dict[tuple[int, int], int] = field(default_factory=dict)  # (task, cluster) -> images picked there
    missing_features: int = 0

    def __len__(self) -> int:
        return len(self.id)


def _first_row(index: dict[str, int], *names: str) -> int:
    return next((index[n] for n in names if n in index), -1)


def collect_points(out, features) -> Points:
    """The points of run ``out`` (a :class:`presel.report.data.RunOutputs`) with ``features`` (a FeatureMatrix)."""
    a = out.assignments
    if a is None:
        err = out.errors.get("assignments")
        raise PreselError(err or f"{out.run_dir}: no selection/assignments.parquet; run presel select (or presel run) "
                                 "into this run directory first")
    summ = out.selection
    pts = Points()
    task_ix: dict[str, int] = {}
    for t in dict.fromkeys(a.task):
        task_ix[t] = len(pts.tasks)
        pts.tasks.append(t)
        pts.weights.append(float(summ.tasks[t].weight) if summ is not None and t in summ.tasks else float("nan"))
    # one row per image: the selected / reference row of the image if any, else its first row
    best: dict[str, int] = {}
    tasks_of: dict[str, list[str]] = {}
    for j, (img, sel, ref) in enumerate(zip(a.image, a.selected, a.reference)):
        k = image_key(img)
        tasks_of.setdefault(k, []).append(a.task[j])
        b = best.get(k)
        if b is None or ((sel or ref) and not (a.selected[b] or a.reference[b])):
            best[k] = j
    index = features.index
    ranks = _rank_column(out)
    for k, j in best.items():
        row = _first_row(index, a.id[j], k)
        if row < 0:
            pts.missing_features += 1
            continue
        t = task_ix[a.task[j]]
        status = REFERENCE if a.reference[j] else SELECTED if a.selected[j] else NOT_PICKED
        if status == SELECTED:
            pts.quota[(t, a.cluster[j])] = pts.quota.get((t, a.cluster[j]), 0) + 1
        _add(pts, a.id[j], a.image[j], t, ",".join(x for x in tasks_of[k] if x != a.task[j]), a.cluster[j],
             int(ranks[j] or 0) if j < len(ranks) else 0, a.nc_score[j], status, row)
    group_of: dict[str, int] = {}
    kept_of: dict[int, str] = {}
    dd = out.dedup
    if dd is not None:
        rows = dd.rows
        for g, key, keep in zip(rows.group, rows.key, rows.keep):
            group_of[image_key(key)] = g
            if keep:
                kept_of[g] = key
        for key, keep, tasks in zip(rows.key, rows.keep, rows.tasks):
            k = image_key(key)
            if keep or k in best:
                continue
            row = _first_row(index, key, k)
            if row < 0:
                pts.missing_features += 1
                continue
            first = (tasks.split(",")[0] if tasks else "") or "(no task)"
            if first not in task_ix:
                task_ix[first] = len(pts.tasks)
                pts.tasks.append(first)
                pts.weights.append(float("nan"))
            _add(pts, key, key, task_ix[first], ",".join(tasks.split(",")[1:]), -1, 0, None, DROPPED, row)
    pts.group = [group_of.get(image_key(i), -1) for i in pts.image]
    pts.kept = [kept_of.get(g, "") if s == DROPPED else "" for g, s in zip(pts.group, pts.status)]
    named = _included(out)
    pts.forced = [s == SELECTED and (i in named or image_key(m) in named)
                  for i, m, s in zip(pts.id, pts.image, pts.status)]
    return pts


def _included(out) -> set[str]:
    """Ids and image keys of the include list the selection read (selection/config.json inputs.include), when that
    file is still there."""
    from presel.report.data import read_json

    try:
        cfg = read_json(out.path("selection", "config.json")) or {}
    except PreselError:
        return set()
    path = (cfg.get("inputs") or {}).get("include") if isinstance(cfg, dict) else None
    if not path or not Path(path).is_file():
        return set()
    from presel.selection.pick_lists import read_located_ids

    try:
        return {x for _, i in read_located_ids(path, "--include") for x in (i, image_key(i))}
    except PreselError:
        return set()


def _rank_column(out) -> list:
    """Rank column of assignments.parquet (written since selections record it; empty when absent)."""
    from presel.report.data import read_parquet

    try:
        cols = read_parquet(out.path("selection", "assignments.parquet"), ("rank",))
    except PreselError:
        return []
    return cols["rank"] if cols else []


def _add(pts: Points, rid: str, image: str, task: int, also: str, cluster: int, rank: int, central, status: int,
         row: int) -> None:
    pts.id.append(rid)
    pts.image.append(image)
    pts.task.append(task)
    pts.also.append(also)
    pts.cluster.append(int(cluster))
    pts.rank.append(rank)
    pts.central.append(float("nan") if central is None else float(central))
    pts.status.append(status)
    pts.feature_row.append(row)


def feature_rows_fn(features, rows: list[int]):
    """``idx -> float32 features`` of the points ``idx`` (a FeatureMatrix gather)."""
    rows_arr = np.asarray(rows, dtype=np.int64)

    def get(idx: np.ndarray) -> np.ndarray:
        return features.rows(rows_arr[idx])

    return get


def run_features(out, run_dir: Path):
    """The run's FeatureMatrix: ``features/`` of the run, else the features file the selection recorded."""
    from presel.io.features import load_features
    from presel.report.data import read_json

    store = run_dir / "features"
    if (store / "summary.json").is_file():
        return load_features(store)
    cfg = read_json(run_dir / "selection" / "config.json") or {}
    src = (cfg.get("inputs") or {}).get("features")
    if src and Path(src).exists():
        return load_features(src)
    raise PreselError(f"{run_dir}: no features/ folder and no readable features file recorded in "
                      "selection/config.json; pass --features FILE")
