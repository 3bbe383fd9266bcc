"""Typed readers of what each stage writes into a run directory (the report's only inputs).

Each reader reads one stage's own output, with the schema its writer writes (named next to each
reader), and nothing else: no alternative key names, no guessing. A missing output is ``None``; an
output that exists but does not have its writer's shape is a :class:`~presel.errors.PreselError`
naming the file (and key, column or line). :class:`RunOutputs` calls the readers lazily and turns such
an error into a "problem" shown in the report, so one damaged file costs one section, not the page.

Stage folders are those of ``presel run`` (:data:`presel.layout.STAGE_DIRS`); a folder written by
the stage's own command (``presel select --out RUN/selection``) reads the same.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presel.errors import PreselError
from presel.layout import MARKER, STAGE_DIRS

# ----------------------------------------------------------------------------- file readers


def read_json(path: Path) -> Any | None:
    """Parsed JSON, ``None`` when the file does not exist."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PreselError(f"{path}: not valid JSON ({e}); rerun the stage that wrote it") from None


def read_jsonl(path: Path) -> list[dict[str, Any]] | None:
    """One JSON object per line, ``None`` when the file does not exist."""
    from presel.io.manifest import iter_jsonl

    if not path.is_file():
        return None
    return [row for _, row in iter_jsonl(path, fix="rerun the stage that wrote it")]


def read_parquet(path: Path, columns: tuple[str, ...]) -> dict[str, list[Any]] | None:
    """The named columns of a Parquet file, ``None`` when it does not exist."""
    if not path.is_file():
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise PreselError(f"{path}: not a readable Parquet file ({e}); rerun the stage that wrote it") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise PreselError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(columns)}")
    return {c: table.column(c).to_pylist() for c in columns}


_KINDS: dict[str, tuple[type, ...]] = {"int": (int,), "num": (int, float), "str": (str,), "bool": (bool,),
                                       "dict": (dict,), "list": (list,)}


def need(d: Any, key: str, kind: str, where: str, *, optional: bool = False) -> Any:
    """``d[key]`` checked against ``kind`` (int, num, str, bool, dict, list); ``where`` names the file.

    ``optional``: a missing key or ``null`` gives ``None``.
    """
    if not isinstance(d, dict):
        raise PreselError(f"{where}: expected a JSON object, got {type(d).__name__}")
    v = d.get(key)
    if v is None:
        if optional:
            return None
        raise PreselError(f"{where}: missing '{key}'; rerun the stage that wrote it")
    ok = isinstance(v, _KINDS[kind]) and (kind == "bool" or not isinstance(v, bool))
    if not ok:
        raise PreselError(f"{where}: '{key}' must be {kind}, got {v!r}")
    return float(v) if kind == "num" else v


def _mapping(d: Any, where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise PreselError(f"{where}: expected a JSON object, got {type(d).__name__}")
    return d


# ----------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class SelectionTask:
    """One task of ``selection/summary.json`` (``presel.selection.select._result``)."""

    records: int
    images: int
    reference: int
    available: int
    clusters: int
    weight: float
    quota: int
    selected: int


@dataclass(frozen=True)
class SelectionSummary:
    """``selection/summary.json``: method, task_weights, tasks, totals."""

    method: str
    task_weights: str
    tasks: dict[str, SelectionTask]
    records: int
    distinct_images: int
    budget: int
    reference: int
    selected: int
    rejected_images: int = 0
    content_duplicate_images: int | None = None  # totals written since exact duplicates count once
    near_duplicate_images_dropped: int | None = None  # totals of a selection run with a dedup keep-list


def read_selection_summary(path: Path) -> SelectionSummary | None:
    d = read_json(path)
    if d is None:
        return None
    where = str(path)
    tasks = {}
    for t, v in need(d, "tasks", "dict", where).items():
        w = f"{where}: tasks.{t}"
        tasks[str(t)] = SelectionTask(*(need(v, k, "int", w) for k in ("records", "images", "reference", "available",
                                                                         "clusters")),
                                      need(v, "weight", "num", w), need(v, "quota", "int", w),
                                      need(v, "selected", "int", w))
    tot = need(d, "totals", "dict", where)
    w = f"{where}: totals"
    return SelectionSummary(need(d, "method", "str", where), need(d, "task_weights", "str", where), tasks,
                            *(need(tot, k, "int", w) for k in ("records", "distinct_images", "budget", "reference",
                                                                "selected")),
                            rejected_images=need(tot, "rejected_images", "int", w, optional=True) or 0,
                            content_duplicate_images=need(tot, "content_duplicate_images", "int", w, optional=True),
                            near_duplicate_images_dropped=need(tot, "near_duplicate_images_dropped", "int", w,
                                                               optional=True))


ASSIGNMENT_COLUMNS = ("id", "image", "task", "cluster", "nc_score", "selected", "reference")


@dataclass(frozen=True)
class Assignments:
    """``selection/assignments.parquet``: one row per pool image (per task) with its cluster and score."""

    id: list[str]
    image: list[str]
    task: list[str]
    cluster: list[int]
    nc_score: list[float | None]  # None for reference images and for method 'random'
    selected: list[bool]
    reference: list[bool]

    def __len__(self) -> int:
        return len(self.id)


def read_assignments(path: Path) -> Assignments | None:
    cols = read_parquet(path, ASSIGNMENT_COLUMNS)
    return None if cols is None else Assignments(**cols)


@dataclass(frozen=True)
class SelectionInputs:
    """``inputs`` of ``selection/config.json``: the files the selection read."""

    pool: str | None
    image_root: str | None  # written since the report needed it; older selections have none


def read_selection_inputs(path: Path) -> SelectionInputs | None:
    d = read_json(path)
    if d is None:
        return None
    inputs = need(d, "inputs", "dict", str(path), optional=True) or {}
    w = f"{path}: inputs"
    return SelectionInputs(need(inputs, "pool", "str", w, optional=True), need(inputs, "image_root", "str", w,
                                                                                 optional=True))


# ----------------------------------------------------------------------------- reference, IRS, weights


@dataclass(frozen=True)
class ReferenceSet:
    """``reference/`` (``presel.importance.reference.reference_to_dir``)."""

    rows: list[dict[str, str]]  # reference.jsonl: id, image, task
    task_images: dict[str, int]  # summary.json tasks.<t>.images
    images: int  # summary.json total.images
    pool: str | None  # config.json pool
    image_root: str | None  # config.json image_root


def read_reference(folder: Path) -> ReferenceSet | None:
    rows = read_jsonl(folder / "reference.jsonl")
    if rows is None:
        return None
    for n, r in enumerate(rows, 1):
        for k in ("id", "image", "task"):
            need(r, k, "str", f"{folder / 'reference.jsonl'} row {n}")
    summ = read_json(folder / "summary.json")
    task_images: dict[str, int] = {}
    images = 0
    if summ is not None:
        where = str(folder / "summary.json")
        for t, v in need(summ, "tasks", "dict", where).items():
            task_images[str(t)] = need(v, "images", "int", f"{where}: tasks.{t}")
        images = need(need(summ, "total", "dict", where), "images", "int", f"{where}: total")
    cfg = read_json(folder / "config.json") or {}
    where = str(folder / "config.json")
    return ReferenceSet(rows, task_images, images, need(cfg, "pool", "str", where, optional=True),
                        need(cfg, "image_root", "str", where, optional=True))


@dataclass(frozen=True)
class IrsScores:
    """``irs/irs.parquet`` (``presel.importance.scoring.score_to_dir``): one row per scored reference sample."""

    id: list[str]
    task: list[str]
    irs: list[float]

    def by_task(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for t, v in zip(self.task, self.irs, strict=True):
            if v is not None and math.isfinite(v):
                out.setdefault(t, []).append(float(v))
        return out


def read_irs(path: Path) -> IrsScores | None:
    cols = read_parquet(path, ("id", "task", "irs"))
    return None if cols is None else IrsScores(**cols)


@dataclass(frozen=True)
class TaskWeight:
    """One task of ``weights/task_weights.json`` (``presel.importance.weights.write_weights``)."""

    score: float  # mean IRS of the task's reference samples
    weight: float
    n: int


def read_weights(path: Path) -> dict[str, TaskWeight] | None:
    d = read_json(path)
    if d is None:
        return None
    out = {}
    for t, v in _mapping(d, str(path)).items():
        w = f"{path}: {t}"
        out[str(t)] = TaskWeight(need(v, "score", "num", w), need(v, "weight", "num", w), need(v, "n", "int", w))
    return out


# ----------------------------------------------------------------------------- rejects and failures


@dataclass(frozen=True)
class Reject:
    """A row of features/rejects.jsonl (id, image, reason), irs/rejected.jsonl (id, task, line, reason) or
    generate/failures.jsonl (id, image, task, kind, error)."""

    id: str
    reason: str
    image: str | None = None
    task: str | None = None


def read_rejects(path: Path, reason: str = "reason") -> list[Reject] | None:
    rows = read_jsonl(path)
    if rows is None:
        return None
    out = []
    for n, r in enumerate(rows, 1):
        w = f"{path} line {n}"
        why = need(r, reason, "str", w)
        kind = need(r, "kind", "str", w, optional=True)
        out.append(Reject(str(need(r, "id", "str", w)), f"{kind}: {why}" if kind else why,
                          need(r, "image", "str", w, optional=True), need(r, "task", "str", w, optional=True)))
    return out


# ----------------------------------------------------------------------------- features


@dataclass(frozen=True)
class FeatureStoreInfo:
    """``features/`` (``presel.features.extract.embed_pool``): summary.json and rejects.jsonl; the vectors are
    opened on demand with :meth:`matrix`."""

    path: Path
    records: int
    distinct_images: int
    embedded_images: int
    rejected_images: int
    dim: int | None

    def matrix(self) -> Any:
        from presel.io.features import load_features

        return load_features(self.path)


def read_features(folder: Path) -> FeatureStoreInfo | None:
    d = read_json(folder / "summary.json")
    if d is None:
        return None
    w = str(folder / "summary.json")
    return FeatureStoreInfo(folder, *(need(d, k, "int", w) for k in ("records", "distinct_images", "embedded_images",
                                                                      "rejected_images")),
                            need(d, "dim", "int", w, optional=True))


# ----------------------------------------------------------------------------- near duplicates


DEDUP_GROUP_COLUMNS = ("group", "key", "keep", "size", "sim_to_kept", "tasks")


@dataclass(frozen=True)
class DedupGroups:
    """``dedup/groups.parquet``: one row per image in a group of near-copies, group 0 the largest."""

    group: list[int]
    key: list[str]  # the image reference (pool image key)
    keep: list[bool]  # the one image of its group that selection keeps
    size: list[int]
    sim_to_kept: list[float]
    tasks: list[str]  # comma-separated; empty without the pool

    def __len__(self) -> int:
        return len(self.key)


@dataclass(frozen=True)
class Dedup:
    """``dedup/`` (``presel.selection.neardup.dedup_to_dir``): summary.json counts and groups.parquet."""

    images: int
    pairs: int
    groups: int
    images_in_groups: int
    dropped: int
    kept: int
    largest_group: int
    threshold: float
    scope: str
    rows: DedupGroups


def read_dedup(folder: Path) -> Dedup | None:
    d = read_json(folder / "summary.json")
    if d is None:
        return None
    w = str(folder / "summary.json")
    cols = read_parquet(folder / "groups.parquet", DEDUP_GROUP_COLUMNS)
    if cols is None:
        raise PreselError(f"{folder / 'groups.parquet'}: missing next to summary.json; rerun presel dedup")
    return Dedup(*(need(d, k, "int", w) for k in ("images", "pairs", "groups", "images_in_groups", "dropped", "kept",
                                                   "largest_group")),
                 need(d, "threshold", "num", w), need(d, "scope", "str", w), DedupGroups(**cols))


# ----------------------------------------------------------------------------- generation, fine-tuning, evaluation


@dataclass(frozen=True)
class GenerationTask:
    items: int
    ok: int
    failed: int


@dataclass(frozen=True)
class Generation:
    """``generate/summary.json`` (``presel.generate.oracle`` / ``online.finalize``)."""

    mode: str
    complete: bool
    selected: int
    generated: int
    failed: int
    pending: int
    failures_by_kind: dict[str, int]
    tasks: dict[str, GenerationTask]
    train_records: int | None
    model: str | None = None
    requests: int | None = None  # total.requests / tokens_in / tokens_out / cost (online and batch modes)
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost: float | None = None


def read_generation(path: Path) -> Generation | None:
    d = read_json(path)
    if d is None:
        return None
    w = str(path)
    tasks = {str(t): GenerationTask(*(need(v, k, "int", f"{w}: tasks.{t}") for k in ("items", "ok", "failed")))
             for t, v in (need(d, "tasks", "dict", w, optional=True) or {}).items()}
    total = need(d, "total", "dict", w, optional=True) or {}
    wt = f"{w}: total"
    return Generation(need(d, "mode", "str", w), need(d, "complete", "bool", w),
                      *(need(d, k, "int", w) for k in ("selected", "generated", "failed", "pending")),
                      dict(need(d, "failures_by_kind", "dict", w, optional=True) or {}), tasks,
                      need(d, "train_records", "int", w, optional=True), need(d, "model", "str", w, optional=True),
                      need(total, "requests", "int", wt, optional=True), need(total, "tokens_in", "int", wt, optional=True),
                      need(total, "tokens_out", "int", wt, optional=True), need(total, "cost", "num", wt, optional=True))


@dataclass(frozen=True)
class TrainLog:
    """``train_log.jsonl`` of a fine-tuned model folder (``presel.finetune.train``): one row per logged step."""

    step: list[int]
    epoch: list[float]
    loss: list[float]


def read_train_log(path: Path) -> TrainLog | None:
    rows = read_jsonl(path)
    if rows is None:
        return None
    step, epoch, loss = [], [], []
    for n, r in enumerate(rows, 1):
        w = f"{path} line {n}"
        step.append(need(r, "step", "int", w))
        epoch.append(need(r, "epoch", "num", w))
        loss.append(need(r, "loss", "num", w))
    return TrainLog(step, epoch, loss)


@dataclass(frozen=True)
class ModelEval:
    """One model of ``evaluation.json`` (``presel.evaluate.summarize`` without predictions)."""

    accuracy: dict[str, float]  # per_task.<t>.accuracy
    mean_accuracy: float


def read_evaluation(path: Path) -> dict[str, ModelEval] | None:
    d = read_json(path)
    if d is None:
        return None
    out = {}
    for name, m in _mapping(d, str(path)).items():
        w = f"{path}: {name}"
        acc = {str(t): need(v, "accuracy", "num", f"{w}: per_task.{t}") for t, v in need(m, "per_task", "dict", w).items()}
        out[str(name)] = ModelEval(acc, need(m, "mean_accuracy", "num", w))
    return out


def read_timings(path: Path) -> dict[str, float] | None:
    """``timings.json`` of ``presel run``: stage -> seconds."""
    d = read_json(path)
    if d is None:
        return None
    return {str(k): need(d, k, "num", str(path)) for k in _mapping(d, str(path))}


@dataclass(frozen=True)
class QualityBench:
    """``bench/quality.png`` (+ ``quality.json``) of ``benchmarks/quality.py``; the JSON is shown when it is a
    flat object or a list of flat objects."""

    png: Path
    data: Any


def read_quality(folder: Path) -> QualityBench | None:
    png = folder / "quality.png"
    if not png.is_file():
        return None
    try:
        data = read_json(folder / "quality.json")
    except PreselError:
        data = None
    return QualityBench(png, data)


# ----------------------------------------------------------------------------- the run


def stage_status(run_dir: Path) -> list[tuple[str, str]]:
    """(stage, 'done' | 'missing') for every stage of ``presel run``, from its folder's completion marker."""
    STAGES = tuple(STAGE_DIRS)

    return [(s, "done" if (run_dir / STAGE_DIRS[s] / MARKER).is_file() else "missing") for s in STAGES]


@dataclass
class RunOutputs:
    """Lazily read stage outputs of one run directory; an unreadable one is ``None`` plus a problem."""

    run_dir: Path
    problems: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # output name -> why it could not be read
    _cache: dict[str, Any] = field(default_factory=dict)

    def _get(self, name: str, fn: Callable[[], Any]) -> Any:
        if name not in self._cache:
            try:
                self._cache[name] = fn()
            except PreselError as e:
                self.problems.append(str(e))
                self.errors[name] = str(e)
                self._cache[name] = None
        return self._cache[name]

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)

    @property
    def selection(self) -> SelectionSummary | None:
        return self._get("selection", lambda: read_selection_summary(self.path(STAGE_DIRS["select"], "summary.json")))

    @property
    def assignments(self) -> Assignments | None:
        return self._get("assignments", lambda: read_assignments(self.path(STAGE_DIRS["select"], "assignments.parquet")))

    @property
    def selection_inputs(self) -> SelectionInputs | None:
        return self._get("selection_inputs", lambda: read_selection_inputs(self.path(STAGE_DIRS["select"], "config.json")))

    @property
    def dedup(self) -> Dedup | None:

        return self._get("dedup", lambda: read_dedup(self.path(STAGE_DIRS["dedup"])))

    @property
    def reference(self) -> ReferenceSet | None:
        return self._get("reference", lambda: read_reference(self.path(STAGE_DIRS["reference"])))

    @property
    def irs(self) -> IrsScores | None:
        return self._get("irs", lambda: read_irs(self.path(STAGE_DIRS["score"], "irs.parquet")))

    @property
    def weights(self) -> dict[str, TaskWeight] | None:
        return self._get("weights", lambda: read_weights(self.path(STAGE_DIRS["weights"], "task_weights.json")))

    @property
    def features(self) -> FeatureStoreInfo | None:
        return self._get("features", lambda: read_features(self.path(STAGE_DIRS["embed"])))

    @property
    def generation(self) -> Generation | None:
        return self._get("generation", lambda: read_generation(self.path(STAGE_DIRS["generate"], "summary.json")))

    @property
    def timings(self) -> dict[str, float] | None:
        return self._get("timings", lambda: read_timings(self.path("timings.json")))

    @property
    def evaluation(self) -> dict[str, ModelEval] | None:
        return self._get("evaluation", lambda: read_evaluation(self.path("evaluation.json")))

    @property
    def quality(self) -> QualityBench | None:
        return self._get("quality", lambda: read_quality(self.path("bench")))

    def rejects(self) -> list[tuple[str, str, list[Reject] | None]]:
        """(file, what, rows) of the three reject files; rows None when the file is absent or unreadable."""
        srcs = (("features/rejects.jsonl", "images rejected by feature extraction", "reason"),
                ("irs/rejected.jsonl", "reference samples IRS could not score", "reason"),
                ("generate/failures.jsonl", "instruction generation failures", "error"))
        return [(rel, what, self._get(rel, lambda rel=rel, key=key: read_rejects(self.path(rel), key)))
                for rel, what, key in srcs]

    def train_logs(self) -> dict[str, dict[str, TrainLog]]:
        """{"reference model": {...}, "final models": {...}}: the fine-tuning logs that exist."""
        groups: dict[str, dict[str, TrainLog]] = {}
        ref = self._get("ref_model", lambda: read_train_log(self.path(STAGE_DIRS["ref_model"], "train_log.jsonl")))
        if ref is not None:
            groups["reference model"] = {"reference model": ref}
        finals: dict[str, TrainLog] = {}
        one = self._get("final_model", lambda: read_train_log(self.path(STAGE_DIRS["final_model"], "train_log.jsonl")))
        if one is not None:
            finals["final model"] = one
        many = self.path("compare", "models")  # presel demo --compare: one folder per final model
        for d in sorted(p for p in many.iterdir() if p.is_dir()) if many.is_dir() else []:
            log = self._get(f"compare/{d.name}", lambda d=d: read_train_log(d / "train_log.jsonl"))
            if log is not None:
                finals[d.name] = log
        if finals:
            groups["final models"] = finals
        return groups

    def stages(self) -> list[tuple[str, str]]:
        return stage_status(self.run_dir)
