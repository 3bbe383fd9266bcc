"""``presel report``: one self-contained HTML file describing a run.

The report reads what the stages wrote into a run directory; every input is optional and a
section whose input is missing says "not run" instead of failing::

    config.yaml                   the run config (presel run / presel demo): its pool section names the pool
    pool/pool.jsonl               otherwise: the pool manifest (images relative to pool/, or to the folder
                                  named in pool/image_root.txt); or pass pool=... / --pool
    reference/reference.jsonl     id, image, task of the reference set
    ref_model/train_log.jsonl     step, epoch, loss, lr, ...   (reference model fine-tuning)
    final_model/train_log.jsonl   the same for the final model; final_models/<name>/train_log.jsonl or
                                  compare/models/<name>/train_log.jsonl for several
    irs/irs.parquet               id, task, loss_q, loss_noq, irs, n_response_tokens;  irs/rejected.jsonl
    weights/task_weights.json     {task: {score, weight, n}}  (also task_weights.json)
    features/                     feature store (presel.io.features.load_features); features/rejects.jsonl
    selection/selection.parquet   id, image, task, cluster, nc_score, rank, source ('reference' | 'selected')
    selection/assignments.parquet id, task, cluster, nc_score, selected, reference
    selection/summary.json        per task: pool, reference, clusters, weight, quota, selected; totals
    generate/summary.json         instruction generation counts
    timings.json                  {stage: seconds}
    evaluation.json               {model: {per_task: {task: {n, accuracy}}, mean_accuracy}} (optional)

The HTML has no external reference: CSS and JS are inline, plots and thumbnails are ``data:``
URIs. It is written atomically (default ``run_dir/report.html``).
"""

from __future__ import annotations

import html
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from presel.errors import PreselError

# (section id, title); the order of the page
SECTIONS: tuple[tuple[str, str], ...] = (
    ("overview", "Overview"),
    ("tasks", "Tasks"),
    ("budget", "Budget share vs pool share"),
    ("irs", "Instruction relevance (IRS)"),
    ("clusters", "Cluster sizes"),
    ("centrality", "Neighbour centrality"),
    ("maps", "Feature maps"),
    ("gallery", "Most and least central images"),
    ("rejects", "Rejects"),
    ("timings", "Stage timings"),
    ("training", "Fine-tuning loss"),
    ("generation", "Instruction generation"),
    ("evaluation", "Evaluation"),
)
MAX_TASK_PANELS = 24  # maps, centrality and galleries show the largest tasks up to this many
GALLERY_K = 8


class NotRun(Exception):
    """A section's input is missing: the section says so instead of failing."""


# ----------------------------------------------------------------------------- reading


@dataclass
class RunData:
    run_dir: Path
    pool_path: Path | None = None
    image_root: Path | None = None
    problems: list[str] = field(default_factory=list)  # inputs that exist but could not be read
    _cache: dict[str, Any] = field(default_factory=dict)

    def _once(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            try:
                self._cache[key] = fn()
            except PreselError as e:
                self.problems.append(f"{key}: {e}")
                self._cache[key] = None
            except Exception as e:  # a damaged input file must not take the whole report down
                self.problems.append(f"{key}: could not read ({type(e).__name__}: {e})")
                self._cache[key] = None
        return self._cache[key]

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)

    # --- generic readers (None when the file is missing)
    def json(self, *candidates: str) -> Any:
        for c in candidates:
            p = self.path(c)
            if p.is_file():
                return self._once(c, lambda p=p: json.loads(p.read_text(encoding="utf-8")))
        return None

    def jsonl(self, rel: str) -> list[dict[str, Any]] | None:
        p = self.path(rel)
        if not p.is_file():
            return None

        def read() -> list[dict[str, Any]]:
            rows = []
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise PreselError(f"{p} line {n}: not valid JSON ({e.msg})") from None
            return rows

        return self._once(rel, read)

    def parquet(self, rel: str) -> dict[str, list[Any]] | None:
        p = self.path(rel)
        if not p.is_file():
            return None

        def read() -> dict[str, list[Any]]:
            import pyarrow.parquet as pq

            return pq.read_table(p).to_pydict()

        return self._once(rel, read)

    # --- the run's inputs
    @property
    def pool(self) -> Any:
        def read() -> Any:
            from presel.io.manifest import read_pool

            path = self.pool_path
            settings: dict[str, Any] = {}
            if path is None:
                path, settings = self._pool_from_run_config()
            if path is None:
                for c in ("pool/pool.jsonl", "pool/pool.json", "pool/pool.parquet", "pool.jsonl"):
                    if self.path(c).is_file():
                        path = self.path(c)
                        break
            if path is None:
                path = self._pool_from_configs()
            if path is None:
                return None
            root = self.image_root or settings.pop("image_root", None)
            txt = path.parent / "image_root.txt"
            if root is None and txt.is_file():
                r = Path(txt.read_text(encoding="utf-8").strip())
                root = r if r.is_absolute() else path.parent / r
            if not settings.get("task_field") and not settings.get("task_map") and not settings.get("task_rules"):
                settings.setdefault("default_task", "default")
            return read_pool(path, image_root=root, **settings)

        return self._once("pool", read)

    def _pool_from_run_config(self) -> tuple[Path | None, dict[str, Any]]:
        """The pool section of ``config.yaml`` saved in the run directory (``presel run`` / ``presel demo``).

        Paths are relative to the config's folder; the task settings are passed on to the reader.
        """
        p = self.path("config.yaml")
        if not p.is_file():
            return None, {}
        import yaml

        try:
            cfg = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return None, {}
        pool = cfg.get("pool") if isinstance(cfg, dict) else None
        if not isinstance(pool, dict) or not isinstance(pool.get("path"), str):
            return None, {}
        pool = {str(k).replace("-", "_"): v for k, v in pool.items()}

        def rel(v: Any) -> Path | None:
            return None if not v else (Path(v) if Path(v).is_absolute() else p.parent / v)

        path = rel(pool["path"])
        if path is None or not path.exists():
            return None, {}
        settings: dict[str, Any] = {}
        if pool.get("image_root"):
            settings["image_root"] = rel(pool["image_root"])
        if pool.get("task_map"):
            settings["task_map"] = rel(pool["task_map"])
        for k in ("task_field", "task_rules", "default_task", "id_field"):
            if pool.get(k) is not None:
                settings[k] = pool[k]
        return path, settings

    def _pool_from_configs(self) -> Path | None:
        """The pool manifest a stage recorded in its config.json (``pool`` or ``inputs.pool``), if it still exists."""
        for rel in ("selection/config.json", "features/config.json", "reference/config.json", "irs/config.json"):
            p = self.path(rel)
            if not p.is_file():
                continue
            try:
                cfg = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            for v in (cfg.get("pool"), (cfg.get("inputs") or {}).get("pool") if isinstance(cfg.get("inputs"), dict) else None):
                if isinstance(v, str) and v:
                    for cand in (Path(v), self.run_dir / v):
                        if cand.is_file():
                            return cand
        return None

    @property
    def reference(self) -> list[dict[str, Any]] | None:
        return self.jsonl("reference/reference.jsonl")

    @property
    def irs(self) -> dict[str, list[Any]] | None:
        return self.parquet("irs/irs.parquet")

    @property
    def weights(self) -> dict[str, Any] | None:
        w = self.json("task_weights.json", "weights/task_weights.json", "weights/weights.json")
        if isinstance(w, dict) and isinstance(w.get("tasks"), dict):
            w = w["tasks"]
        if not isinstance(w, dict):
            return None
        out = {}
        for t, v in w.items():  # task -> {"score", "weight", "n"}, or task -> weight
            if isinstance(v, dict):
                out[str(t)] = v
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[str(t)] = {"weight": v}
        return out

    @property
    def selection(self) -> dict[str, list[Any]] | None:
        return self.parquet("selection/selection.parquet")

    @property
    def assignments(self) -> dict[str, list[Any]] | None:
        return self.parquet("selection/assignments.parquet")

    @property
    def selection_summary(self) -> dict[str, Any] | None:
        return self.json("selection/summary.json")

    @property
    def features(self) -> Any:
        p = self.path("features")
        if not p.is_dir():
            return None

        def read() -> Any:
            from presel.io.features import load_features

            return load_features(p)

        return self._once("features", read)

    def train_logs(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """{"reference model": {name: rows}, "final models": {name: rows}} for the logs that exist."""
        groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
        ref = self.jsonl("ref_model/train_log.jsonl")
        if ref:
            groups["reference model"] = {"reference model": ref}
        finals: dict[str, list[dict[str, Any]]] = {}
        one = self.jsonl("final_model/train_log.jsonl")
        if one:
            finals["final model"] = one
        for folder in ("final_models", "compare/models"):  # several final models (presel demo --compare)
            many = self.path(folder)
            if many.is_dir():
                for d in sorted(p for p in many.iterdir() if p.is_dir()):
                    rows = self.jsonl(f"{folder}/{d.name}/train_log.jsonl")
                    if rows:
                        finals[d.name] = rows
        if finals:
            groups["final models"] = finals
        return groups


# ----------------------------------------------------------------------------- task table


def _num(d: Any, *names: str) -> float | None:
    if not isinstance(d, dict):
        return None
    for n in names:
        v = d.get(n)
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
            return v
        if isinstance(v, (list, tuple)) and n in ("clusters",):
            return len(v)
    return None


def _summary_tasks(s: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(s, dict):
        return {}
    for key in ("tasks", "per_task"):
        if isinstance(s.get(key), dict):
            return {str(t): v for t, v in s[key].items() if isinstance(v, dict)}
        if isinstance(s.get(key), list):
            return {str(r.get("task")): r for r in s[key] if isinstance(r, dict) and r.get("task") is not None}
    return {str(t): v for t, v in s.items() if isinstance(v, dict) and t not in ("totals", "total", "config", "budget")}


@dataclass
class TaskRow:
    task: str
    pool: int | None = None
    images: int | None = None
    reference: int | None = None
    irs: float | None = None
    weight: float | None = None
    clusters: int | None = None
    quota: int | None = None
    selected: int | None = None


def task_rows(data: RunData) -> list[TaskRow]:
    """One row per task from whichever inputs exist (selection summary first, then the raw files)."""
    order: dict[str, None] = {}
    pool = data.pool
    if pool is not None:
        order.update(dict.fromkeys(pool.tasks))
    summ = _summary_tasks(data.selection_summary)
    weights = data.weights or {}
    asg = data.assignments
    for src in (summ, weights):
        order.update(dict.fromkeys(src))
    if asg and "task" in asg:
        order.update(dict.fromkeys(str(t) for t in asg["task"]))
    rows = {t: TaskRow(t) for t in order}
    if pool is not None:
        rec = Counter(r.task for r in pool.records)
        img: dict[str, set[str]] = defaultdict(set)
        for r in pool.records:
            img[r.task].add(r.image_key)
        for t in rows:
            rows[t].pool, rows[t].images = rec.get(t, 0), len(img.get(t, ()))
    ref = data.reference
    if ref is not None:
        c = Counter(str(r.get("task")) for r in ref)
        for t in rows:
            rows[t].reference = c.get(t, 0)
    irs = data.irs
    irs_mean: dict[str, float] = {}
    if irs and "task" in irs and "irs" in irs:
        vals: dict[str, list[float]] = defaultdict(list)
        for t, v in zip(irs["task"], irs["irs"], strict=True):
            if v is not None and math.isfinite(v):
                vals[str(t)].append(float(v))
        irs_mean = {t: float(np.mean(v)) for t, v in vals.items() if v}
    sel_count: Counter[str] = Counter()
    sel = data.selection
    if sel and "task" in sel:
        src = sel.get("source") or ["selected"] * len(sel["task"])
        sel_count = Counter(str(t) for t, s in zip(sel["task"], src, strict=True) if s != "reference")
    clusters: dict[str, set[Any]] = defaultdict(set)
    if asg and "task" in asg and "cluster" in asg:
        for t, c in zip(asg["task"], asg["cluster"], strict=True):
            clusters[str(t)].add(c)
    for t, row in rows.items():
        s, w = summ.get(t, {}), weights.get(t, {})
        if row.pool is None:
            row.pool = _int(_num(s, "pool", "pool_size", "n_pool", "records", "n"))
        if row.images is None:
            row.images = _int(_num(s, "images", "pool_images", "distinct_images"))
        ref_sel = _int(_num(s, "reference", "n_reference", "reference_count"))
        if ref_sel is not None:  # what the selection counted (an image shared with a reference task counts too)
            row.reference = ref_sel
        row.irs = _num(w, "score", "irs", "mean_irs")
        if row.irs is None:
            row.irs = irs_mean.get(t)
        row.weight = _num(w, "weight")
        if row.weight is None:
            row.weight = _num(s, "weight")
        row.clusters = _int(_num(s, "clusters", "n_clusters", "k")) or (len(clusters[t]) if t in clusters else None)
        row.quota = _int(_num(s, "quota", "budget", "task_budget"))
        row.selected = _int(_num(s, "selected", "n_selected"))
        if row.selected is None and sel is not None:
            row.selected = sel_count.get(t, 0)
    return list(rows.values())


def _totals(data: RunData) -> dict[str, int]:
    """Run-wide counts where they are known exactly (distinct images: shared images count once)."""
    out: dict[str, int] = {}
    summ = data.selection_summary
    t = summ.get("totals") if isinstance(summ, dict) and isinstance(summ.get("totals"), dict) else {}
    for attr, names in (("images", ("distinct_images",)), ("reference", ("reference", "n_reference")),
                        ("selected", ("selected", "n_selected"))):
        v = _int(_num(t, *names))
        if v is not None:
            out[attr] = v
    pool = data.pool
    if pool is not None:
        out["images"] = len(pool.distinct_images())
        out["pool"] = len(pool.records)
    elif data.reference is not None and "reference" not in out:
        out["reference"] = len({str(r.get("image", r.get("id"))) for r in data.reference})
    return out


def _int(v: float | None) -> int | None:
    return None if v is None else int(v)


# ----------------------------------------------------------------------------- html helpers


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any, kind: str = "int") -> str:
    if v is None:
        return '<span class="na">–</span>'
    if kind == "int":
        return f"{int(v):,}"
    if kind == "pct":
        return f"{v * 100:.1f}%"
    if kind == "f3":
        return f"{v:.3f}"
    return esc(v)


def _table(head: list[str], rows: list[list[str]], *, cls: str = "", numeric_from: int = 1,
           foot: list[str] | None = None) -> str:
    th = "".join(f'<th class="{"num" if i >= numeric_from else ""}">{h}</th>' for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td class="{"num" if i >= numeric_from else ""}">{c}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    tf = ""
    if foot:
        tf = "<tfoot><tr>" + "".join(f'<td class="{"num" if i >= numeric_from else ""}">{c}</td>'
                                     for i, c in enumerate(foot)) + "</tr></tfoot>"
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody>{tf}</table>'


def _img(uri: str, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{esc(alt)}">'


def _bar(frac: float | None, color: str) -> str:
    if frac is None:
        return ""
    return f'<span class="bar"><span style="width:{max(0.0, min(1.0, frac)) * 100:.1f}%;background:{color}"></span></span>'


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


# ----------------------------------------------------------------------------- sections


class Report:
    def __init__(self, data: RunData):
        self.data = data
        self._rows: list[TaskRow] | None = None
        self._colors: dict[str, str] | None = None

    @property
    def rows(self) -> list[TaskRow]:
        if self._rows is None:
            self._rows = task_rows(self.data)
        return self._rows

    @property
    def colors(self) -> dict[str, str]:
        from presel.report.plots import task_color

        if self._colors is None:
            self._colors = {r.task: task_color(i) for i, r in enumerate(self.rows)}
        return self._colors

    def color(self, task: str) -> str:
        import zlib

        from presel.report.plots import task_color

        return self.colors.get(task) or task_color(zlib.crc32(task.encode()))

    # --- overview
    def overview(self) -> str:
        d = self.data
        rows = self.rows
        cards: list[tuple[str, str]] = []
        pool = d.pool
        if pool is not None:
            cards.append((f"{len(pool.distinct_images()):,}", f"pool images ({len(pool):,} records)"))
        if rows:
            cards.append((f"{len(rows)}", "tasks"))
        totals = _totals(d)
        nref = totals.get("reference")
        if nref is None and any(r.reference is not None for r in rows):
            nref = sum(r.reference or 0 for r in rows)
        nsel = totals.get("selected")
        if nsel is None and any(r.selected is not None for r in rows):
            nsel = sum(r.selected or 0 for r in rows)
        if nref is not None:
            cards.append((f"{nref:,}", "reference images"))
        if nsel is not None:
            cards.append((f"{nsel:,}", "newly selected"))
        summ = d.selection_summary if isinstance(d.selection_summary, dict) else {}
        totals = summ.get("totals") if isinstance(summ.get("totals"), dict) else {}
        npool = len(pool.distinct_images()) if pool is not None else _int(_num(totals, "distinct_images", "images"))
        if pool is None and npool is not None:
            cards.insert(0, (f"{npool:,}", "pool images"))
        if npool is None and any(r.images or r.pool for r in rows):
            npool = sum((r.images or r.pool or 0) for r in rows)
        if npool and (nsel is not None or nref is not None):
            used = (nsel or 0) + (nref or 0)
            cards.append((f"{used / npool * 100:.1f}%", f"budget: {used:,} of {npool:,} images (reference + selected)"))
        timings = d.json("timings.json")
        if isinstance(timings, dict):
            from presel.report.plots import _fmt_seconds

            tot = sum(float(v) for v in timings.values() if isinstance(v, (int, float)))
            cards.append((_fmt_seconds(tot), "total stage time"))
        if not cards:
            raise NotRun("nothing to summarise: the run directory holds none of the stage outputs listed at the bottom")
        html_cards = "".join(f'<div class="stat"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'
                             for v, k in cards)
        stages = [("pool", pool is not None), ("reference", d.reference is not None),
                  ("reference model", d.path("ref_model").is_dir()), ("IRS", d.irs is not None),
                  ("task weights", d.weights is not None), ("features", d.path("features").is_dir()),
                  ("selection", d.assignments is not None or d.selection is not None),
                  ("generation", d.path("generate").is_dir()),
                  ("final model", any(d.path(x).is_dir() for x in ("final_model", "final_models", "compare/models"))),
                  ("evaluation", d.path("evaluation.json").is_file())]
        if summ.get("method"):
            stages.append((f"method: {summ['method']}", True))
        chips = "".join(f'<span class="chip {"ok" if ok else "off"}">{"✓" if ok else "·"} {esc(n)}</span>'
                        for n, ok in stages)
        probs = ""
        if d.problems:
            probs = '<div class="warn"><b>Inputs that could not be read:</b><ul>' + "".join(
                f"<li>{esc(p)}</li>" for p in d.problems) + "</ul></div>"
        return f'<div class="stats">{html_cards}</div><div class="chips">{chips}</div>{probs}'

    # --- tasks
    def tasks(self) -> str:
        rows = self.rows
        if not rows:
            raise NotRun("no task information: needs pool/pool.jsonl, selection/summary.json or task_weights.json")
        max_w = max((r.weight or 0.0) for r in rows) or 1.0
        body = []
        for r in rows:
            body.append([
                f'<span class="dot" style="background:{self.color(r.task)}"></span>{esc(r.task)}',
                _fmt(r.pool), _fmt(r.images), _fmt(r.reference),
                _fmt(r.irs, "f3"),
                (f'{_bar(r.weight / max_w, self.color(r.task))} {_fmt(r.weight, "f3")}' if r.weight is not None
                 else _fmt(None)),
                _fmt(r.clusters), _fmt(r.quota), _fmt(r.selected),
            ])

        totals = _totals(self.data)

        def tot(attr: str) -> str:
            if attr in totals:
                return _fmt(totals[attr])
            vals = [getattr(r, attr) for r in rows if getattr(r, attr) is not None]
            return _fmt(sum(vals)) if vals else _fmt(None)

        wsum = [r.weight for r in rows if r.weight is not None]
        foot = ["total", tot("pool"), tot("images"), tot("reference"), "", _fmt(sum(wsum), "f3") if wsum else "",
                tot("clusters"), tot("quota"), tot("selected")]
        table = _table(["task", "pool records", "pool images", "reference", "IRS score", "weight", "clusters",
                        "quota", "selected"], body, cls="tasks sortable", foot=foot)
        return (table + _note("IRS score: mean over the task's reference samples of L(R|Q,I) / L(R|I); a low score "
                              "means the question matters, and the task gets a larger weight "
                              "(softmax of -score / &tau;). Quota: the task's share of the new budget; selected: "
                              "images picked beyond the reference set."))

    # --- budget share
    def budget(self) -> str:
        from presel.report.plots import share_bars

        rows = [r for r in self.rows if (r.images or r.pool) is not None]
        if not rows or not any(r.selected is not None or r.reference is not None for r in rows):
            raise NotRun("needs pool sizes and a selection (selection/summary.json or selection/selection.parquet)")
        pool_n = np.asarray([float(r.images or r.pool or 0) for r in rows])
        bud_n = np.asarray([float((r.selected or 0) + (r.reference or 0)) for r in rows])
        ps = pool_n / (pool_n.sum() or 1.0)
        bs = bud_n / (bud_n.sum() or 1.0)
        uri = share_bars([r.task for r in rows], ps.tolist(), bs.tolist())
        moved = sorted(zip(bs - ps, [r.task for r in rows], strict=True))
        txt = ""
        if len(rows) > 1:
            txt = _note(f"Largest gain: <b>{esc(moved[-1][1])}</b> ({moved[-1][0] * 100:+.1f} points); largest cut: "
                        f"<b>{esc(moved[0][1])}</b> ({moved[0][0] * 100:+.1f} points). Budget = reference + "
                        "selected images.")
        return _img(uri, "budget share vs pool share per task") + txt

    # --- IRS
    def irs(self) -> str:
        from presel.report.plots import irs_boxes

        irs = self.data.irs
        if not irs or "irs" not in irs or "task" not in irs:
            raise NotRun("needs irs/irs.parquet (presel score)")
        vals: dict[str, list[float]] = defaultdict(list)
        for t, v in zip(irs["task"], irs["irs"], strict=True):
            if v is not None and math.isfinite(float(v)):
                vals[str(t)].append(float(v))
        order = [r.task for r in sorted(self.rows, key=lambda r: (r.irs is None, r.irs or 0.0)) if r.task in vals]
        order += [t for t in vals if t not in order]
        uri = irs_boxes(order, [np.asarray(vals[t]) for t in order], [self.color(t) for t in order])
        n = sum(len(v) for v in vals.values())
        return _img(uri, "IRS per task") + _note(f"{n:,} reference samples scored; tasks sorted by IRS score "
                                                 "(top: the question matters most).")

    # --- clusters
    def _asg(self) -> dict[str, list[Any]]:
        asg = self.data.assignments
        if not asg or "task" not in asg:
            raise NotRun("needs selection/assignments.parquet (presel select)")
        return asg

    def clusters(self) -> str:
        from presel.report.plots import cluster_hist

        asg = self._asg()
        if "cluster" not in asg:
            raise NotRun("selection/assignments.parquet has no 'cluster' column")
        size: Counter[tuple[str, Any]] = Counter(zip((str(t) for t in asg["task"]), asg["cluster"], strict=True))
        per_task: dict[str, list[int]] = defaultdict(list)
        for (t, _), n in sorted(size.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            per_task[t].append(n)
        order = [r.task for r in self.rows if r.task in per_task] + [t for t in per_task if t not in self.colors]
        per_task = {t: per_task[t] for t in order}
        uri = cluster_hist(per_task, {t: self.color(t) for t in per_task})
        rows = [[esc(t), _fmt(len(v)), _fmt(min(v)), f"{np.median(v):.0f}", _fmt(max(v)),
                 _fmt(sum(1 for x in v if x == 1))] for t, v in per_task.items()]
        return _img(uri, "cluster size histogram") + _table(
            ["task", "clusters", "smallest", "median", "largest", "singletons"], rows, cls="compact")

    # --- centrality
    def centrality(self) -> str:
        from presel.report.plots import centrality_grid

        asg = self._asg()
        if "nc_score" not in asg:
            raise NotRun("selection/assignments.parquet has no 'nc_score' column")
        sel = asg.get("selected") or [False] * len(asg["task"])
        ref = asg.get("reference") or [False] * len(asg["task"])
        per: dict[str, tuple[list[float], list[bool]]] = defaultdict(lambda: ([], []))
        for t, s, se, rf in zip(asg["task"], asg["nc_score"], sel, ref, strict=True):
            if s is None or rf or not math.isfinite(float(s)):
                continue
            per[str(t)][0].append(float(s))
            per[str(t)][1].append(bool(se))
        if not per:
            raise NotRun("no centrality scores in selection/assignments.parquet")
        tasks = self._largest(list(per))
        uri = centrality_grid({t: (np.asarray(per[t][0]), np.asarray(per[t][1])) for t in tasks})
        return _img(uri, "centrality distributions") + self._capped_note(len(per)) + _note(
            "Candidates: pool images outside the reference set. Selection takes the most central images of each "
            "cluster, so the blue mass sits on the right of each cluster's own distribution.")

    def _largest(self, tasks: list[str]) -> list[str]:
        size = {r.task: (r.images or r.pool or 0) for r in self.rows}
        if len(tasks) <= MAX_TASK_PANELS:
            order = [r.task for r in self.rows if r.task in tasks]
            return order + [t for t in tasks if t not in order]
        keep = set(sorted(tasks, key=lambda t: (-size.get(t, 0), t))[:MAX_TASK_PANELS])
        return [t for t in tasks if t in keep]

    @staticmethod
    def _capped_note(n: int) -> str:
        return _note(f"Showing the {MAX_TASK_PANELS} largest of {n} tasks.") if n > MAX_TASK_PANELS else ""

    # --- ids -> image keys / paths
    def _id_image(self) -> dict[str, str]:
        out: dict[str, str] = {}
        pool = self.data.pool
        if pool is not None:
            out.update((r.id, r.image) for r in pool.records)
        for src in (self.data.selection, self.data.assignments):
            if src and "id" in src and "image" in src:
                out.update((str(i), str(im)) for i, im in zip(src["id"], src["image"], strict=True) if im)
        if self.data.reference:
            out.update((str(r["id"]), str(r["image"])) for r in self.data.reference if r.get("image"))
        return out

    def _image_path(self, image: str) -> Path | None:
        p = Path(image)
        if p.is_absolute():
            return p
        pool = self.data.pool
        roots = []
        if pool is not None:
            roots.append(pool.image_root)
        if self.data.image_root is not None:
            roots.append(self.data.image_root)
        roots.append(self.data.path("pool"))
        for root in roots:
            if (root / p).is_file():
                return root / p
        return None

    # --- maps
    def maps(self) -> str:
        from presel.records import image_key
        from presel.report.plots import pca_2d, pca_maps

        asg = self._asg()
        fm = self.data.features
        if fm is None:
            raise NotRun("needs the feature store features/ (presel embed)")
        index = fm.index
        id_img = self._id_image()
        sel = asg.get("selected") or [False] * len(asg["task"])
        ref = asg.get("reference") or [False] * len(asg["task"])
        by_task: dict[str, list[tuple[int, bool, bool]]] = defaultdict(list)
        missing = 0
        for i, t, se, rf in zip(asg["id"], asg["task"], sel, ref, strict=True):
            row = index.get(str(i))
            if row is None and str(i) in id_img:
                row = index.get(image_key(id_img[str(i)]))
            if row is None:
                missing += 1
                continue
            by_task[str(t)].append((row, bool(se), bool(rf)))
        if not by_task:
            raise NotRun("no selection record could be matched to a feature vector (ids or image keys)")
        rng = np.random.default_rng(0)
        panels = {}
        for t in self._largest(list(by_task)):
            items = by_task[t]
            if len(items) > 4000:  # keep every selected / reference point, thin the rest
                keep = [k for k, it in enumerate(items) if it[1] or it[2]]
                rest = [k for k, it in enumerate(items) if not (it[1] or it[2])]
                keep += sorted(rng.choice(rest, size=max(0, 4000 - len(keep)), replace=False).tolist()) if rest else []
                items = [items[k] for k in sorted(keep)]
            x = fm.rows(np.asarray([it[0] for it in items]))
            xy, var = pca_2d(x)
            panels[t] = {"xy": xy, "selected": [it[1] for it in items], "reference": [it[2] for it in items],
                         "variance": var}
        uri = pca_maps(panels)
        extra = _note(f"{missing:,} records had no feature vector (rejected images) and are not drawn.") if missing else ""
        return (_img(uri, "PCA map per task") + self._capped_note(len(by_task)) + extra +
                _note("First two principal components of each task's image features (numpy SVD). Grey: pool; "
                      "black &times;: reference set; blue: selected. Clustered selection should cover the map "
                      "rather than crowd one region."))

    # --- gallery
    def gallery(self) -> str:
        from presel.report.plots import image_data_uri

        asg = self._asg()
        if "nc_score" not in asg:
            raise NotRun("selection/assignments.parquet has no 'nc_score' column")
        id_img = self._id_image()
        if not id_img:
            raise NotRun("image paths unknown: needs pool/pool.jsonl (or --pool) or an 'image' column")
        sel = asg.get("selected") or [False] * len(asg["task"])
        ref = asg.get("reference") or [False] * len(asg["task"])
        per: dict[str, list[tuple[float, str, bool]]] = defaultdict(list)
        for i, t, s, se, rf in zip(asg["id"], asg["task"], asg["nc_score"], sel, ref, strict=True):
            if s is None or rf or not math.isfinite(float(s)) or str(i) not in id_img:
                continue
            per[str(t)].append((float(s), str(i), bool(se)))
        if not per:
            raise NotRun("no scored images with known paths")
        seen_missing = shown = 0
        blocks = []
        for t in self._largest(list(per)):
            items = sorted(per[t], key=lambda x: (-x[0], x[1]))
            k = min(GALLERY_K, len(items) // 2 if len(items) > 1 else 1)
            groups = [("most central", items[:k]), ("least central", items[::-1][:k])]
            cols = []
            for label, group in groups:
                figs = []
                for score, rid, is_sel in group:
                    shown += 1
                    path = self._image_path(id_img[rid])
                    try:
                        uri = image_data_uri(path) if path is not None else None
                    except Exception:  # an unreadable image shows as "missing", the report goes on
                        uri = None
                    if uri is None:
                        seen_missing += 1
                        thumb = '<div class="missing">image<br>missing</div>'
                    else:
                        thumb = f'<img src="{uri}" alt="{esc(rid)}">'
                    figs.append(f'<figure class="{"sel" if is_sel else ""}" title="{esc(rid)}">{thumb}'
                                f'<figcaption>{score:.3f}{" ✓" if is_sel else ""}</figcaption></figure>')
                cols.append(f'<div class="thumbs"><div class="lbl">{label}</div>{"".join(figs)}</div>')
            blocks.append(f'<div class="gal"><h3><span class="dot" style="background:{self.color(t)}"></span>'
                          f'{esc(t)}</h3>{"".join(cols)}</div>')
        if shown and seen_missing == shown:
            raise NotRun("no image file found (the pool's images are not under the run directory's pool/); pass "
                         "--pool MANIFEST and/or --image-root DIR")
        extra = _note(f"{seen_missing} image files could not be opened.") if seen_missing else ""
        return ("".join(blocks) + self._capped_note(len(per)) + extra +
                _note("Neighbour-centrality score under each image; a blue frame and ✓ mark selected images."))

    # --- rejects
    def rejects(self) -> str:
        d = self.data
        parts = []
        srcs = [("features/rejects.jsonl", "images rejected by feature extraction"),
                ("irs/rejected.jsonl", "reference samples IRS could not score"),
                ("generate/failures.jsonl", "instruction generation failures")]
        found = False
        for rel, what in srcs:
            rows = d.jsonl(rel)
            if rows is None:
                continue
            found = True
            if not rows:
                parts.append(f"<h3>{esc(what)}</h3>" + _note(f"none ({esc(rel)} is empty)"))
                continue
            cols = list(dict.fromkeys(k for r in rows[:200] for k in r))[:5]
            reasons = Counter(str(r.get("reason", r.get("error", "?")))[:80] for r in rows)
            summary = ", ".join(f"{esc(k)} ({n})" for k, n in reasons.most_common(5))
            body = [[esc(str(r.get(c, ""))[:160]) for c in cols] for r in rows[:50]]
            more = _note(f"first 50 of {len(rows):,} shown") if len(rows) > 50 else ""
            parts.append(f"<h3>{esc(what)}: {len(rows):,}</h3>" + _note(f"by reason: {summary}") +
                         _table([esc(c) for c in cols], body, cls="compact", numeric_from=99) + more)
        if not found:
            raise NotRun("no rejects files (features/rejects.jsonl, irs/rejected.jsonl)")
        return "".join(parts)

    # --- timings
    def timings(self) -> str:
        from presel.report.plots import _fmt_seconds, timing_bars

        t = self.data.json("timings.json")
        if not isinstance(t, dict) or not t:
            raise NotRun("needs timings.json (written by presel run / presel demo)")
        t = {str(k): float(v) for k, v in t.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not t:
            raise NotRun("timings.json holds no numbers")
        total = sum(t.values())
        return _img(timing_bars(t), "stage timings") + _note(f"Total {_fmt_seconds(total)} over {len(t)} stages.")

    # --- training
    def training(self) -> str:
        from presel.report.plots import loss_curves

        groups = self.data.train_logs()
        series: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
        table = []
        for g, logs in groups.items():
            for name, rows in logs.items():
                pts = [(float(r.get("step", i)), float(r["loss"])) for i, r in enumerate(rows)
                       if isinstance(r.get("loss"), (int, float)) and math.isfinite(float(r["loss"]))]
                if not pts:
                    continue
                series.setdefault(g, {})[name] = ([p[0] for p in pts], [p[1] for p in pts])
                epochs = [r.get("epoch") for r in rows if isinstance(r.get("epoch"), (int, float))]
                table.append([esc(name), _fmt(len(pts)), f"{max(epochs):.2f}" if epochs else _fmt(None),
                              f"{pts[0][1]:.3f}", f"{pts[-1][1]:.3f}", f"{min(p[1] for p in pts):.3f}"])
        if not series:
            raise NotRun("needs ref_model/train_log.jsonl or final_model(s)/.../train_log.jsonl with a 'loss' field")
        return _img(loss_curves(series), "fine-tuning loss curves") + _table(
            ["model", "logged steps", "epochs", "first loss", "last loss", "lowest"], table, cls="compact")

    # --- generation
    def generation(self) -> str:
        g = self.data.json("generate/summary.json")
        if not isinstance(g, dict):
            raise NotRun("needs generate/summary.json (presel generate)")
        rows = []
        for k, v in sorted(g.items()):
            if isinstance(v, dict):
                v = ", ".join(f"{a}: {b}" for a, b in list(v.items())[:12])
            elif isinstance(v, list):
                v = f"{len(v)} items"
            rows.append([esc(k), esc(v)])
        return _table(["field", "value"], rows, cls="compact kv", numeric_from=99)

    # --- evaluation
    def evaluation(self) -> str:
        ev = self.data.json("evaluation.json")
        if not isinstance(ev, dict):
            raise NotRun("no evaluation.json (presel demo --compare / presel evaluate)")
        models = ev.get("models") or ev.get("results") or ev
        models = {str(k): v for k, v in models.items() if isinstance(v, dict)}

        def per_task(m: dict[str, Any]) -> dict[str, float]:
            pt = m.get("per_task") or m.get("tasks") or m.get("accuracy") or {}
            if not isinstance(pt, dict):
                return {}
            out = {}
            for t, v in pt.items():
                a = _num(v, "accuracy", "acc") if isinstance(v, dict) else v
                if isinstance(a, (int, float)):
                    out[str(t)] = float(a)
            return out

        tables = {n: per_task(m) for n, m in models.items()}
        tables = {n: v for n, v in tables.items() if v}
        if not tables:
            return f"<pre>{esc(json.dumps(ev, indent=2)[:4000])}</pre>"
        names = list(tables)
        tasks = sorted({t for v in tables.values() for t in v})
        ref = "full" if "full" in tables else None
        body = [[esc(t)] + [_fmt(tables[n].get(t), "pct") for n in names] for t in tasks]
        means = {n: float(np.mean(list(v.values()))) for n, v in tables.items()}
        body.append(["<b>mean</b>"] + [f"<b>{_fmt(means[n], 'pct')}</b>" for n in names])
        foot = None
        if ref:
            rel = []
            for n in names:
                r = [tables[n][t] / tables[ref][t] for t in tasks if t in tables[n] and tables[ref].get(t, 0) > 0]
                rel.append(f"{np.mean(r) * 100:.1f}%" if r else _fmt(None))
            foot = [f"relative to {esc(ref)}"] + rel
        return _table(["task"] + [esc(n) for n in names], body, cls="compact", foot=foot) + _note(
            "Exact-match accuracy on held-out questions" + (f"; relative = mean over tasks of accuracy / {esc(ref)}."
                                                            if ref else "."))


# ----------------------------------------------------------------------------- page

CSS = """
:root{--ink:#1f2937;--muted:#6b7280;--line:#e5e7eb;--bg:#f6f7f9;--card:#fff;--sel:#2563eb;--accent:#f97316}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;color:var(--ink);background:var(--bg)}
header{background:#111827;color:#f9fafb;padding:22px 32px 18px}
header h1{margin:0;font-size:22px;font-weight:650;letter-spacing:.2px}
header h1 span{color:#93c5fd;font-weight:500}
header .sub{color:#9ca3af;font-size:12.5px;margin-top:4px;word-break:break-all}
nav{position:sticky;top:0;z-index:5;background:rgba(255,255,255,.96);border-bottom:1px solid var(--line);padding:8px 32px;display:flex;flex-wrap:wrap;gap:4px 14px}
nav a{color:var(--muted);text-decoration:none;font-size:12.5px}
nav a:hover{color:var(--sel)}
nav a.off{color:#c0c4cc}
main{max-width:1180px;margin:0 auto;padding:20px 24px 48px}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 22px;margin:0 0 18px;box-shadow:0 1px 2px rgba(0,0,0,.03)}
section h2{margin:0 0 12px;font-size:16.5px;font-weight:650}
section h3{font-size:13.5px;margin:14px 0 6px}
section.not-run{background:#fafafa}
section.not-run h2{color:var(--muted)}
section.error{background:#fff7f7;border-color:#fecaca}
.notrun{color:var(--muted);font-style:italic;margin:0}
.note{color:var(--muted);font-size:12.5px;margin:8px 0 0}
img.plot{display:block;max-width:100%;height:auto;margin:4px 0}
table{border-collapse:collapse;width:100%;font-size:13px;margin-top:6px}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{font-weight:600;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.3px;background:#fafbfc}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th:hover{color:var(--sel)}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#fbfbfc}
tbody tr:hover{background:#f1f5ff}
tfoot td{font-weight:650;border-top:2px solid var(--line);border-bottom:none}
table.compact{width:auto;min-width:50%}
table.kv td{white-space:normal}
.na{color:#c0c4cc}
.dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:7px;vertical-align:0}
.bar{display:inline-block;width:70px;height:8px;background:#eef0f3;border-radius:4px;vertical-align:1px;margin-right:6px;overflow:hidden}
.bar span{display:block;height:100%;border-radius:4px}
.stats{display:flex;flex-wrap:wrap;gap:12px}
.stat{flex:1 1 150px;border:1px solid var(--line);border-radius:8px;padding:10px 14px;background:#fbfcfe}
.stat .v{font-size:22px;font-weight:650;color:#111827}
.stat .k{color:var(--muted);font-size:12px}
.chips{margin-top:12px;display:flex;flex-wrap:wrap;gap:6px}
.chip{font-size:12px;padding:2px 9px;border-radius:999px;border:1px solid var(--line)}
.chip.ok{background:#ecfdf5;border-color:#a7f3d0;color:#065f46}
.chip.off{color:#9ca3af}
.warn{margin-top:12px;background:#fff7ed;border:1px solid #fed7aa;border-radius:8px;padding:8px 12px;font-size:12.5px}
.gal{margin:6px 0 14px}
.gal h3{margin:10px 0 4px}
.thumbs{display:flex;flex-wrap:wrap;align-items:flex-start;gap:6px;margin:2px 0}
.thumbs .lbl{width:92px;color:var(--muted);font-size:12px;padding-top:30px}
figure{margin:0;width:84px;text-align:center}
figure img,figure .missing{width:80px;height:80px;object-fit:cover;border-radius:6px;border:2px solid #e5e7eb;display:block;margin:0 auto;background:#f3f4f6}
figure.sel img{border-color:var(--sel)}
figure .missing{font-size:10px;color:#9ca3af;padding-top:24px}
figcaption{font-size:11px;color:var(--muted);font-variant-numeric:tabular-nums}
figure.sel figcaption{color:var(--sel);font-weight:600}
pre{background:#f8fafc;border:1px solid var(--line);padding:10px;border-radius:6px;overflow:auto;font-size:12px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:0 0 30px}
#js-errors:empty{display:none}
#js-errors{background:#fef2f2;border:1px solid #fecaca;color:#991b1b;padding:8px 12px;margin:10px 32px;border-radius:8px}
"""

# The error hook runs first, so a failing script below it is visible in the page (and to the test).
JS_HEAD = """
window.addEventListener('error', function (e) {
  var box = document.getElementById('js-errors');
  var msg = (e && e.message) ? e.message : 'resource failed to load';
  if (box) { var li = document.createElement('div'); li.textContent = msg; box.appendChild(li); }
  document.documentElement.setAttribute('data-js-errors', String((+document.documentElement.getAttribute('data-js-errors') || 0) + 1));
}, true);
"""

JS_BODY = """
(function () {
  function num(td) {
    var t = td.textContent.replace(/[,%\\s✓]/g, '');
    var v = parseFloat(t);
    return isNaN(v) ? null : v;
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    table.querySelectorAll('thead th').forEach(function (th, col) {
      th.addEventListener('click', function () {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var dir = th.getAttribute('data-dir') === 'asc' ? -1 : 1;
        th.setAttribute('data-dir', dir === 1 ? 'asc' : 'desc');
        rows.sort(function (a, b) {
          var x = num(a.cells[col]), y = num(b.cells[col]);
          if (x !== null && y !== null) return dir * (x - y);
          return dir * a.cells[col].textContent.localeCompare(b.cells[col].textContent);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  var secs = document.querySelectorAll('section[data-section]');
  var ok = document.querySelectorAll('section[data-status="ok"]').length;
  var imgs = document.images, broken = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth === 0) broken++;
  }
  var root = document.documentElement;
  root.setAttribute('data-sections', String(secs.length));
  root.setAttribute('data-sections-ok', String(ok));
  root.setAttribute('data-images', String(imgs.length));
  root.setAttribute('data-broken-images', String(broken));
  root.setAttribute('data-loaded', 'yes');
})();
"""


def render_report(data: RunData, title: str | None = None) -> str:
    """The report page as one HTML string."""
    rep = Report(data)
    sections = []
    nav = []
    for sid, heading in SECTIONS:
        try:
            body = getattr(rep, sid)()
            status = "ok"
        except NotRun as e:
            body = f'<p class="notrun">Not run: {esc(e)}</p>'
            status = "not-run"
        except PreselError as e:
            body = f'<p class="notrun">Could not be drawn: {esc(e)}</p>'
            status = "not-run"
        except Exception as e:  # one broken section must not cost the whole report
            body = f'<p class="notrun">Could not be drawn ({esc(type(e).__name__)}: {esc(e)}); please report this.</p>'
            status = "error"
        sections.append(f'<section id="{sid}" data-section="{sid}" data-status="{status}" '
                        f'class="{status}"><h2>{esc(heading)}</h2>{body}</section>')
        nav.append(f'<a href="#{sid}" class="{"" if status == "ok" else "off"}">{esc(heading)}</a>')
    name = title or data.run_dir.resolve().name
    from presel import __version__

    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>presel report · {esc(name)}</title><style>{CSS}</style><script>{JS_HEAD}</script></head><body>"
        f"<header><h1>presel report <span>· {esc(name)}</span></h1>"
        f"<div class=\"sub\">PreSel pre-instruction data selection · run directory {esc(data.run_dir.resolve())}</div></header>"
        f"<nav>{''.join(nav)}</nav><div id=\"js-errors\"></div><main>{''.join(sections)}</main>"
        f"<footer>presel {esc(__version__)} · self-contained report: no network access needed</footer>"
        f"<script>{JS_BODY}</script></body></html>\n"
    )


def build_report(run_dir: str | Path, out: str | Path | None = None, *, pool: str | Path | None = None,
                 image_root: str | Path | None = None, title: str | None = None) -> Path:
    """Write the self-contained HTML report of ``run_dir`` (default ``run_dir/report.html``); return its path.

    ``pool`` / ``image_root`` name the pool manifest when the run directory has no ``pool/``.
    """
    from presel.io.atomic import atomic_file

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PreselError(f"{run_dir}: run directory not found; pass the --out folder of presel run / presel demo")
    if pool is not None and not Path(pool).exists():
        raise PreselError(f"--pool {pool}: file not found")
    data = RunData(run_dir, Path(pool) if pool is not None else None, Path(image_root) if image_root else None)
    page = render_report(data, title=title)
    out = Path(out) if out is not None else run_dir / "report.html"
    with atomic_file(out) as f:
        f.write(page)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(out, 0o666 & ~mask)  # a report is for sharing: ordinary file permissions, not mkstemp's 0600
    return out


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars")


def find_chromium() -> str | None:
    import shutil

    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def screenshot(report: str | Path, png: str | Path, *, width: int = 1280, height: int = 2400,
               timeout: float = 120.0) -> Path:
    """PNG screenshot (top ``height`` px) of a report page with headless Chromium, offline (e.g. for a README)."""
    import subprocess
    import tempfile

    exe = find_chromium()
    if exe is None:
        raise PreselError("--screenshot needs Chromium: install it (Debian: apt-get install chromium; "
                          "or bash scripts/system-deps.sh)")
    if width < 200 or height < 200:
        raise PreselError(f"screenshot size {width}x{height} is too small; use at least 200x200")
    report, png = Path(report).resolve(), Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="presel-chromium-") as prof:
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={prof}", f"--window-size={width},{height}",
               "--virtual-time-budget=5000", f"--screenshot={png}", report.as_uri()]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                 env={**os.environ, "HOME": prof})
        except subprocess.TimeoutExpired:
            raise PreselError(f"chromium did not finish the screenshot of {report} within {timeout:.0f} s") from None
    if not png.is_file():
        raise PreselError(f"chromium wrote no screenshot of {report}: {res.stderr.strip()[-300:]}")
    return png

