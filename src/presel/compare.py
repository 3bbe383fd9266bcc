"""``presel compare``: does a selection train a better VLM? Arms x seeds, fine-tuned and scored the same way.

Every arm selects the same budget from the same pool with the same reference set (the base run's), then
fine-tunes the same base model with the same recipe; one seed drives both the selection and the fine-tuning,
so arms are paired seed by seed. Each model answers the same held-out questions, scored by exact match and
answer NLL (:mod:`presel.evaluate`). The table gives, per task and overall, mean and 95% t-interval over the
seeds, and paired (same-seed) differences between arms.

Arms (``arms``; ``best_method`` is the within-task rule the "best" arms use, ``presel-cover`` by default):

=============  ==========================================================  ==============
arm            selection                                                   task weights
=============  ==========================================================  ==============
presel         PreSel as in the paper (neighbour centrality per cluster)   IRS
presel-best    ``best_method``                                             IRS
size-best      ``best_method``                                             size (pool share)
random         uniform random                                              size
typiclust      TypiClust                                                   size
full           the whole pool (one model, seed ``first_seed``)             -
=============  ==========================================================  ==============

Contrasts (paired by seed): PreSel - random (``presel - random``), IRS - size weights (``presel-best -
size-best``), best rule - paper rule (``presel-best - presel``) and ``presel-best - random``.

Layout of ``out``: ``selections/<arm>-s<seed>/`` (a ``presel run`` folder per selection), ``models/<name>/``,
``evals/<name>.json``, ``image-features/`` (the frozen vision tower's outputs, shared by every model),
``evaluation.json``, ``table.md``, ``timings.json``. A rerun (after a kill, too) reuses finished selections,
models and evaluations; a fine-tune that was cut off resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presel.errors import PreselError
from presel.io.digest import file_sha256

ARMS: dict[str, dict[str, str] | None] = {
    "presel": {"method": "presel", "task_weights": "irs"},
    "presel-best": {"method": "{best}", "task_weights": "irs"},
    "size-best": {"method": "{best}", "task_weights": "size"},
    "random": {"method": "random", "task_weights": "size"},
    "typiclust": {"method": "typiclust", "task_weights": "size"},
    "full": None,
}
CONTRASTS: tuple[tuple[str, str, str], ...] = (
    ("PreSel - random", "presel", "random"),
    ("IRS - size weights", "presel-best", "size-best"),
    ("best rule - paper rule", "presel-best", "presel"),
    ("best - random", "presel-best", "random"),
)
METRICS = ("answer_nll", "accuracy")


@dataclass
class CompareConfig:
    """Settings of ``presel compare`` (paths relative to the config file's folder)."""

    run: str = ""  # the run config (pool, reference, annotate, weights, embed, generate); run first when needed
    heldout: str = ""  # held-out questions: LLaVA JSON/JSONL with a task per record
    full: str | None = None  # instructions for the whole pool (the full-data arm); None: no full arm
    out: str | None = None  # default: <run out>/compare
    model: str = "llava-small"  # the base VLM every arm fine-tunes
    budget: float = 0.15
    seeds: int = 3
    first_seed: int = 0
    best_method: str = "presel-cover"  # within-task rule of the presel-best and size-best arms
    arms: tuple[str, ...] = tuple(ARMS)
    image_features: bool = True  # cache the frozen vision tower's outputs (LLaVA-style models)
    jobs: int = 1  # models fine-tuned and evaluated at once, each in its own process (e.g. one per core or GPU)
    finetune: dict[str, Any] = field(default_factory=dict)  # FinetuneConfig settings (the recipe of every arm)
    evaluate: dict[str, Any] = field(default_factory=dict)  # EvalConfig settings

    def __post_init__(self) -> None:
        from presel.selection.select import METHODS

        if not self.run:
            raise PreselError("run (the run config whose reference set, weights and features the arms share) is missing")
        if not self.heldout:
            raise PreselError("heldout (the held-out questions, LLaVA JSON with a task per record) is missing")
        if self.budget <= 0:
            raise PreselError(f"budget={self.budget} must be > 0 (a fraction below 1, or a count)")
        if self.seeds < 1:
            raise PreselError(f"seeds={self.seeds} must be >= 1 (3 or more for a confidence interval)")
        if self.jobs < 1:
            raise PreselError(f"jobs={self.jobs} must be >= 1")
        if self.first_seed < 0:
            raise PreselError(f"first_seed={self.first_seed} must be >= 0")
        if self.best_method not in METHODS:
            raise PreselError(f"best_method={self.best_method!r} is not a selection method; use one of {', '.join(METHODS)}")
        if isinstance(self.arms, str):
            self.arms = tuple(a for a in self.arms.replace(",", " ").split() if a)
        self.arms = tuple(self.arms)
        bad = [a for a in self.arms if a not in ARMS]
        if bad or not self.arms:
            raise PreselError(f"arms: {', '.join(bad) or '(none)'} unknown; choose from {', '.join(ARMS)}")
        if "full" in self.arms and not self.full:
            raise PreselError("arm 'full' needs 'full' (instructions for the whole pool); set it or drop the arm")

    @property
    def seed_list(self) -> list[int]:
        return [self.first_seed + i for i in range(self.seeds)]

    def select_settings(self, arm: str) -> dict[str, str]:
        spec = ARMS[arm]
        if spec is None:
            raise KeyError(arm)
        return {k: v.replace("{best}", self.best_method) for k, v in spec.items()}

    def model_names(self) -> list[tuple[str, str, int]]:
        """``(model name, arm, seed)`` of every model, in the order they are trained."""
        out = [(f"{a}-s{s}", a, s) for s in self.seed_list for a in self.arms if a != "full"]
        if "full" in self.arms:
            out.append(("full", "full", self.first_seed))
        return out


def load_compare_config(path: str | Path) -> tuple[CompareConfig, Path]:
    """The config and the folder its relative paths start from."""
    from presel.config import from_dict, load_yaml

    path = Path(path)
    return from_dict(CompareConfig, load_yaml(path), source=str(path)), path.parent


# --------------------------------------------------------------------------------------------- running


def _abs(base: Path, value: Any) -> Any:
    """``value`` as an absolute path when it names an existing path relative to ``base``; else unchanged."""
    if isinstance(value, str) and value and not os.path.isabs(value) and (base / value).exists():
        return str((base / value).resolve())
    if isinstance(value, dict):
        return {k: _abs(base, v) for k, v in value.items()}
    return value


def _file_digest(path: Path) -> str:
    return file_sha256(path)[:32]


def _write_yaml(path: Path, data: dict[str, Any], note: str) -> None:
    import yaml

    from presel.io.atomic import atomic_file

    text = f"# {note}\n" + yaml.safe_dump(data, sort_keys=False)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    with atomic_file(path) as f:
        f.write(text)


def selection_config(run_cfg: Any, raw: dict[str, Any], cc: CompareConfig, arm: str, seed: int) -> dict[str, Any]:
    """The ``presel run`` config of one arm's selection: the base run's reference set, weights and features,
    the arm's method and task weights, the budget and seed, and the base run's instruction settings."""
    base = run_cfg.base_dir
    select = dict(raw.get("select") or {})
    select.update(budget=cc.budget, seed=seed, **cc.select_settings(arm))
    select["features"] = str(run_cfg.stage_dir("embed").resolve())
    select["reference"] = str((run_cfg.stage_dir("reference") / "reference.jsonl").resolve())
    if select["task_weights"] == "irs":
        select["weights"] = str((run_cfg.stage_dir("weights") / "task_weights.json").resolve())
    else:
        select.pop("weights", None)
    cfg: dict[str, Any] = {"out": ".", "pool": _abs(base, dict(raw["pool"])),
                           "annotate": {"annotated": str((run_cfg.stage_dir("annotate") / "train.json").resolve())},
                           "select": select, "generate": _abs(base, dict(raw.get("generate") or {}))}
    if "protocol" in raw:
        cfg["protocol"] = raw["protocol"]
    return cfg


def run_compare(config: CompareConfig, base_dir: str | Path = ".", *, log: Callable[[str], None] = print,
                on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the comparison; return the content of ``evaluation.json``."""
    from presel.config import load_yaml
    from presel.evaluate import EvalConfig
    from presel.finetune.train import FinetuneConfig
    from presel.pipeline import Pipeline, RunConfig

    cc = config
    base_dir = Path(base_dir)
    run_path = base_dir / cc.run
    raw = load_yaml(run_path)
    run_cfg = RunConfig.load(run_path)
    for need in ("reference", "annotate", "weights", "embed", "generate"):
        if run_cfg.section(need) is None:
            raise PreselError(f"{run_path}: the comparison needs the run's '{need}' section (arms share its outputs)")
    out = (base_dir / cc.out) if cc.out else run_cfg.out / "compare"
    heldout = base_dir / cc.heldout
    if not heldout.is_file():
        raise PreselError(f"heldout {heldout}: file not found; name the held-out questions (LLaVA JSON with tasks)")
    full_data = base_dir / cc.full if cc.full else None
    if full_data is not None and not full_data.is_file():
        raise PreselError(f"full {full_data}: file not found; name instructions for the whole pool, or drop the arm")
    from presel.config import from_dict

    tune = from_dict(FinetuneConfig, cc.finetune, source=f"{run_path}: compare.finetune")
    ev = from_dict(EvalConfig, {"batch_size": _auto_eval_batch(tune), **cc.evaluate}, source="compare.evaluate")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    log(f"compare: base run {run_path}")
    Pipeline(run_cfg, log=log).run()
    image_root = Pipeline(run_cfg, log=log).pool().image_root
    feats_dir = out / "image-features" if cc.image_features else None
    timings = _read_json(out / "timings.json") or {}
    results: dict[str, Any] = {}
    todo: list[tuple[str, Path, int]] = []
    for name, arm, seed in cc.model_names():
        if arm == "full":
            assert full_data is not None
            todo.append((name, full_data, seed))
            continue
        sel_dir = out / "selections" / name
        sel_dir.mkdir(parents=True, exist_ok=True)
        _write_yaml(sel_dir / "config.yaml", selection_config(run_cfg, raw, cc, arm, seed),
                    f"presel compare: selection of arm {arm}, seed {seed}")
        t0 = time.perf_counter()
        Pipeline(RunConfig.load(sel_dir / "config.yaml"), log=lambda m: None).run()
        timings.setdefault(name, {}).setdefault("select_s", round(time.perf_counter() - t0, 1))
        todo.append((name, sel_dir / "generate" / "train.json", seed))
    job = {"model": cc.model, "tune": tune, "image_root": image_root, "feats_dir": feats_dir, "heldout": heldout,
           "ev": ev, "out": out, "threads": max(1, (os.cpu_count() or 1) // cc.jobs)}
    if cc.jobs > 1 and on_step is None and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(cc.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            wjob = dict(job, worker=True, parent=os.getpid())
            futures = {name: pool.submit(_model_job, name, data, seed, wjob) for name, data, seed in todo}
            for name, fut in futures.items():
                results[name], spent = fut.result()
                timings.setdefault(name, {}).update(spent)
                _save_timings(out / "timings.json", timings)
    else:
        for name, data, seed in todo:
            results[name], spent = _model_job(name, data, seed, job, log=log, on_step=on_step)
            timings.setdefault(name, {}).update(spent)
            _save_timings(out / "timings.json", timings)
    cells = compare_cells(results, cc)
    table = compare_table(cells)
    log(table)
    wall = round(time.perf_counter() - t_start, 1)
    doc = {"models": {n: {k: v for k, v in r.items() if k != "predictions"} for n, r in results.items()},
           "arms": {a: (cc.select_settings(a) if ARMS[a] else "full") for a in cc.arms},
           "seeds": cc.seed_list, "budget": cc.budget, "model": cc.model, "cells": cells,
           "finetune": _jsonable(tune), "evaluate": _jsonable(ev), "timings": timings, "wall_seconds_this_run": wall}
    _save_json(out / "evaluation.json", doc)
    from presel.io.atomic import atomic_file

    with atomic_file(out / "table.md") as f:
        f.write(table + "\n")
    return doc


def compare_out(config: CompareConfig, base_dir: str | Path = ".") -> Path:
    """The comparison's folder."""
    from presel.pipeline import RunConfig

    base_dir = Path(base_dir)
    return (base_dir / config.out) if config.out else RunConfig.load(base_dir / config.run).out / "compare"


def finished_results(config: CompareConfig, base_dir: str | Path = ".") -> dict[str, Any]:
    """The evaluations finished so far (``evals/<name>.json``), by model name; for a table while a run goes on."""
    out = compare_out(config, base_dir)
    found = {}
    for name, _, _ in config.model_names():
        doc = _read_json(out / "evals" / f"{name}.json")
        if doc is not None and "result" in doc:
            found[name] = doc["result"]
    return found


def _auto_eval_batch(tune: Any) -> int:
    from presel.devices import resolve_device

    return 128 if resolve_device(tune.device).startswith("cuda") else 32


def _jsonable(cfg: Any) -> dict[str, Any]:
    from presel.config import to_dict

    return to_dict(cfg)


def _finetune(data: Path, model: str, out: Path, tune: Any, seed: int, image_root: Any, feats_dir: Path | None,
              on_step: Any) -> None:
    import dataclasses

    from presel.finetune.train import finetune

    finetune(data, model, out, dataclasses.replace(tune, seed=seed), image_root=image_root,
             image_features=feats_dir, on_step=on_step)


def _model_job(name: str, data: Path, seed: int, job: dict[str, Any], *, log: Callable[[str], None] = print,
               on_step: Any = None) -> tuple[dict[str, Any], dict[str, float]]:
    """Fine-tune model ``name`` unless it is finished, then its evaluation (reused when it was made for this model,
    held-out file and settings). Returns ``(result, {"finetune_s", "evaluate_s"} of what ran here)``."""
    from presel.evaluate import evaluate_model

    out: Path = job["out"]
    if job.get("worker"):  # one of ``jobs`` processes: its share of the cores (CPU work)
        import torch

        torch.set_num_threads(min(torch.get_num_threads(), job["threads"]))
        on_step = _stop_when_orphaned(job["parent"])
    model_dir = out / "models" / name
    spent: dict[str, float] = {}
    if not (model_dir / "config.json").exists():
        log(f"compare: fine-tuning {name} on {data}")
        t0 = time.perf_counter()
        _finetune(data, job["model"], model_dir, job["tune"], seed, job["image_root"], job["feats_dir"], on_step)
        spent["finetune_s"] = round(time.perf_counter() - t0, 1)
    path = out / "evals" / f"{name}.json"
    key = {"model": _file_digest(model_dir / "summary.json") if (model_dir / "summary.json").exists() else None,
           "heldout": _file_digest(job["heldout"]), "evaluate": _jsonable(job["ev"])}
    old = _read_json(path)
    if old is not None and old.get("key") == key:
        return old["result"], spent
    log(f"compare: evaluating {name}")
    t0 = time.perf_counter()
    res = evaluate_model(model_dir, job["heldout"], job["ev"], progress=False, image_features=job["feats_dir"])
    spent["evaluate_s"] = round(time.perf_counter() - t0, 1)
    _save_json(path, {"key": key, "result": res})
    return res, spent


def _stop_when_orphaned(parent: int) -> Callable[[dict[str, Any]], None]:
    """A fine-tuning step hook that stops a worker whose ``presel compare`` process is gone (killed), so a rerun
    never trains the same model twice at once; the fine-tune resumes from its checkpoint on the rerun."""

    def check(_row: dict[str, Any]) -> None:
        if os.getppid() != parent:
            raise SystemExit(f"presel compare (pid {parent}) is gone; stopping this worker")

    return check


def _save_timings(path: Path, timings: dict[str, Any]) -> None:
    """Merge this run's timings into the file (another ``presel compare`` with other arms may share the folder)."""
    merged = _read_json(path) or {}
    for name, t in timings.items():
        merged.setdefault(name, {}).update(t)
    timings.update(merged)
    _save_json(path, merged)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _save_json(path: Path, obj: Any) -> None:
    from presel.io.atomic import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, obj)


# --------------------------------------------------------------------------------------------- statistics


def _ci(values: list[float]) -> dict[str, float]:
    from presel.bench.quality import t_interval

    m, lo, hi = t_interval(values)
    return {"mean": m, "ci_low": lo, "ci_high": hi, "n": len(values)}


def metric(result: Mapping[str, Any], task: str, name: str) -> float | None:
    """A model's ``name`` (accuracy / answer_nll) on ``task``, or over tasks for ``task == "mean"``."""
    if task == "mean":
        v = result.get("mean_accuracy" if name == "accuracy" else "mean_answer_nll")
    else:
        v = result.get("per_task", {}).get(task, {}).get(name)
    return None if v is None else float(v)


def paired_differences(a: Mapping[int, float | None], b: Mapping[int, float | None]) -> tuple[list[int], list[float]]:
    """``a[s] - b[s]`` for every seed ``s`` both arms have a value for (sorted by seed): differences are only
    ever taken between models that share the selection and fine-tuning seed."""
    seeds = sorted(s for s in set(a) & set(b) if a[s] is not None and b[s] is not None)
    return seeds, [float(a[s]) - float(b[s]) for s in seeds]  # type: ignore[arg-type]


def compare_cells(results: Mapping[str, Any], cc: CompareConfig) -> dict[str, Any]:
    """Per arm, task and metric: mean and 95% t-interval over seeds; the full model's values; per contrast,
    task and metric: the paired (same seed) differences' mean and interval."""
    tasks = sorted({t for r in results.values() for t in r["per_task"]}) + ["mean"]
    arms = [a for a in cc.arms if a != "full"]

    def by_seed(arm: str, task: str, m: str) -> dict[int, float | None]:
        return {s: metric(results[f"{arm}-s{s}"], task, m) for s in cc.seed_list if f"{arm}-s{s}" in results}

    cells: dict[str, Any] = {"tasks": tasks, "arms": {}, "full": {}, "paired": {}}
    for arm in arms:
        cells["arms"][arm] = {t: {m: _ci([v for v in by_seed(arm, t, m).values() if v is not None])
                                  for m in METRICS if any(v is not None for v in by_seed(arm, t, m).values())}
                              for t in tasks}
    if "full" in results:
        cells["full"] = {t: {m: metric(results["full"], t, m) for m in METRICS} for t in tasks}
    for label, a, b in CONTRASTS:
        if a not in arms or b not in arms:
            continue
        cells["paired"][label] = {"arms": [a, b], "tasks": {}}
        for t in tasks:
            cells["paired"][label]["tasks"][t] = {}
            for m in METRICS:
                seeds, d = paired_differences(by_seed(a, t, m), by_seed(b, t, m))
                if d:
                    cells["paired"][label]["tasks"][t][m] = dict(_ci(d), seeds=seeds)
    return cells


def _fmt(c: Mapping[str, float] | None, metric_name: str) -> str:
    if not c:
        return "n/a"
    scale, digits = (100.0, 1) if metric_name == "accuracy" else (1.0, 3)
    if c.get("n", 2) < 2:  # one seed: no interval
        return f"{scale * c['mean']:.{digits}f} (1 seed)"
    half = scale * (c["ci_high"] - c["mean"])
    return f"{scale * c['mean']:.{digits}f} ± {half:.{digits}f}"


def compare_table(cells: Mapping[str, Any]) -> str:
    """Markdown: per metric a table of task x arm (mean ± 95% CI half-width over seeds, full model alone), then
    the paired differences (task x contrast)."""
    arms = list(cells["arms"])
    lines: list[str] = []
    titles = {"answer_nll": "answer NLL (lower is better)", "accuracy": "exact match, % (higher is better)"}
    for m in METRICS:
        head = ["task", *arms] + (["full"] if cells["full"] else [])
        lines.append(f"**{titles[m]}**, mean ± 95% CI over seeds\n")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|---" + "|---:" * (len(head) - 1) + "|")
        for t in cells["tasks"]:
            row = [t if t != "mean" else "**mean over tasks**"]
            row += [_fmt(cells["arms"][a].get(t, {}).get(m), m) for a in arms]
            if cells["full"]:
                v = cells["full"][t][m]
                row.append("n/a" if v is None else (f"{100 * v:.1f}" if m == "accuracy" else f"{v:.3f}"))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    if cells["paired"]:
        labels = list(cells["paired"])
        for m in METRICS:
            lines.append(f"**paired differences (same seed), {titles[m]}**, mean ± 95% CI\n")
            head = ["task"] + [f"{lab} ({' - '.join(cells['paired'][lab]['arms'])})" for lab in labels]
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|---" + "|---:" * len(labels) + "|")
            for t in cells["tasks"]:
                row = [t if t != "mean" else "**mean over tasks**"]
                row += [_fmt(cells["paired"][lab]["tasks"].get(t, {}).get(m), m) for lab in labels]
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
    return "\n".join(lines).rstrip()
