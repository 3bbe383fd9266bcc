"""What each report section shows, computed from the typed stage outputs of :mod:`presel.report.data`.

Every section function takes a :class:`View` and returns the template context of its section, or raises
:class:`NotRun` saying which stage output it needs. Plots come from :mod:`presel.report.plots` as ``data:``
URIs; the HTML is the templates' business.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from presel.report.data import Assignments, RunOutputs

MAX_TASK_PANELS = 24  # maps, centrality and galleries show the largest tasks up to this many
GALLERY_K = 8
DEDUP_GROUPS = 8  # the near-duplicates section shows this many of the largest groups
DEDUP_THUMBS = 12  # images shown per group (the kept one first)
MAP_POINTS = 4000  # per task; selected and reference points are always drawn


class NotRun(Exception):
    """A section's input is missing: the section says so instead of failing."""


@dataclass
class TaskRow:
    task: str
    records: int | None = None
    images: int | None = None
    reference: int | None = None
    irs: float | None = None
    weight: float | None = None
    clusters: int | None = None
    quota: int | None = None
    selected: int | None = None


@dataclass
class View:
    """The run's outputs plus what several sections share (task order and colours, image roots)."""

    out: RunOutputs
    image_root: Path | None = None  # build_report(image_root=...)
    pool: Path | None = None  # build_report(pool=...): its folder is the default image root
    _rows: list[TaskRow] | None = None
    _roots: list[Path] | None = None
    _colors: dict[str, str] = field(default_factory=dict)

    @property
    def rows(self) -> list[TaskRow]:
        if self._rows is None:
            self._rows = task_rows(self.out)
            from presel.report.plots import task_color

            self._colors = {r.task: task_color(i) for i, r in enumerate(self._rows)}
        return self._rows

    def color(self, task: str) -> str:
        from presel.report.plots import task_color

        _ = self.rows
        return self._colors.get(task) or task_color(zlib.crc32(task.encode()))

    def size(self, task: str) -> int:
        return next((r.images or r.records or 0 for r in self.rows if r.task == task), 0)

    def largest(self, tasks: list[str]) -> list[str]:
        """``tasks`` in table order, capped to the MAX_TASK_PANELS largest."""
        order = [r.task for r in self.rows if r.task in tasks] + [t for t in tasks if t not in self._colors]
        if len(order) <= MAX_TASK_PANELS:
            return order
        keep = set(sorted(order, key=lambda t: (-self.size(t), t))[:MAX_TASK_PANELS])
        return [t for t in order if t in keep]

    def absent(self, name: str, needs: str) -> NotRun:
        """The NotRun of a section whose input ``name`` is None: unreadable (with why) or not written."""
        err = self.out.errors.get(name)
        return NotRun(f"could not read it: {err}" if err else f"needs {needs}")

    def assignments(self) -> Assignments:
        a = self.out.assignments
        if a is None:
            raise self.absent("assignments", "selection/assignments.parquet (presel select)")
        return a

    def image_roots(self) -> list[Path]:
        """Folders the selection's relative image paths may be under, most specific first: the explicit
        image root, the one the selection (or the reference stage) recorded, the pool manifest's folder."""
        if self._roots is None:
            self._roots = _image_roots(self)
        return self._roots

    def image_locator(self, image: str) -> str | None:
        """The :mod:`presel.io.sources` locator of a run image (a file, or a table row / tar member) under the
        first image root that holds it; ``None`` when none does. ``locate`` applies the inside-the-root policy
        (symlinks included), so a report never embeds a file outside the image folders the run was given."""
        from presel.errors import PreselError
        from presel.io.sources import is_url, locate, split_ref

        for r in self.image_roots():
            try:
                loc = locate(image, r)
            except PreselError:  # refused under this root
                continue
            container = split_ref(loc)[1]
            if not is_url(container) and Path(container).is_file():
                return loc
        return None

    def thumbnail(self, image: str) -> str | None:
        """A ``data:`` URI thumbnail of a run image, ``None`` (a placeholder) when it is refused, missing or
        does not decode."""
        from presel.errors import PreselError
        from presel.features.images import ImageRejected
        from presel.io.sources import load_image
        from presel.report.plots import thumbnail_uri

        loc = self.image_locator(image)
        if loc is None:
            return None
        try:
            return thumbnail_uri(load_image(loc))
        except (ImageRejected, PreselError, OSError, ValueError):  # an unreadable image shows as missing
            return None


def _image_roots(v: View) -> list[Path]:
    cands: list[Path] = []
    if v.image_root is not None:
        cands.append(v.image_root)
    if v.pool is not None:
        cands.append(v.pool if v.pool.is_dir() else v.pool.parent)
    si, ref = v.out.selection_inputs, v.out.reference
    for s in (si.image_root if si else None, ref.image_root if ref else None):
        if s:
            cands.append(Path(s))
    for s in (si.pool if si else None, ref.pool if ref else None):  # read_pool's default: the manifest's folder
        if s:
            cands.append(Path(s) if Path(s).is_dir() else Path(s).parent)
    cands.append(v.out.path("pool"))  # presel demo keeps its pool in the run directory
    out: list[Path] = []
    for c in cands:
        for p in ([c] if c.is_absolute() else [c, v.out.run_dir / c]):
            if p.is_dir() and p not in out:
                out.append(p)
    return out


# ----------------------------------------------------------------------------- the task table


def task_rows(out: RunOutputs) -> list[TaskRow]:
    """One row per task from the selection summary, the task weights, the IRS table and the reference set."""
    sel, w, ref, irs = out.selection, out.weights or {}, out.reference, out.irs
    irs_by = irs.by_task() if irs is not None else {}
    order = dict.fromkeys([*(sel.tasks if sel else ()), *(ref.task_images if ref else ()), *w, *irs_by])
    ref_count = Counter(r["task"] for r in ref.rows) if ref is not None else Counter()
    rows = []
    for t in order:
        r = TaskRow(t)
        if sel is not None and t in sel.tasks:
            s = sel.tasks[t]
            r.records, r.images, r.reference, r.clusters = s.records, s.images, s.reference, s.clusters
            r.weight, r.quota, r.selected = s.weight, s.quota, s.selected
        elif ref is not None:
            r.images, r.reference = ref.task_images.get(t), ref_count.get(t, 0)
        if t in w:
            r.irs, r.weight = w[t].score, w[t].weight
        elif irs_by.get(t):
            r.irs = float(np.mean(irs_by[t]))
        rows.append(r)
    return rows


def _sum(rows: list[TaskRow], attr: str) -> int | None:
    vals = [getattr(r, attr) for r in rows if getattr(r, attr) is not None]
    return sum(vals) if vals else None


def tasks(v: View) -> dict[str, Any]:
    rows = v.rows
    if not rows:
        raise NotRun("no task information: needs selection/summary.json, reference/ or weights/task_weights.json")
    sel, ref = v.out.selection, v.out.reference
    max_w = max((r.weight or 0.0) for r in rows) or 1.0
    total = {a: _sum(rows, a) for a in ("records", "images", "reference", "clusters", "quota", "selected")}
    if sel is not None:  # an image in two tasks counts once in the totals
        total.update(records=sel.records, images=sel.distinct_images, reference=sel.reference, selected=sel.selected)
    elif ref is not None:
        total.update(images=ref.images or total["images"], reference=len(ref.rows))
    weights = [r.weight for r in rows if r.weight is not None]
    return {"rows": [{"row": r, "color": v.color(r.task), "bar": (r.weight or 0.0) / max_w} for r in rows],
            "total": total, "weight_sum": sum(weights) if weights else None}


# ----------------------------------------------------------------------------- overview


def overview(v: View) -> dict[str, Any]:
    from presel.report.plots import _fmt_seconds

    o = v.out
    sel, feats, ref, timings = o.selection, o.features, o.reference, o.timings
    cards: list[tuple[str, str]] = []
    if sel is not None:
        cards.append((f"{sel.distinct_images:,}", f"pool images ({sel.records:,} records)"))
    elif feats is not None:
        cards.append((f"{feats.distinct_images:,}", f"pool images ({feats.records:,} records)"))
    elif ref is not None and ref.images:
        cards.append((f"{ref.images:,}", "pool images"))
    if v.rows:
        cards.append((f"{len(v.rows)}", "tasks"))
    if sel is not None or ref is not None:
        cards.append((f"{sel.reference if sel else len(ref.rows):,}", "reference images"))
    if sel is not None:
        cards.append((f"{sel.selected:,}", "newly selected"))
        cards.append((f"{sel.budget / max(1, sel.distinct_images) * 100:.1f}%",
                      f"budget: {sel.budget:,} of {sel.distinct_images:,} images (reference + selected)"))
    if timings:
        cards.append((_fmt_seconds(sum(timings.values())), "total stage time"))
    stages = o.stages()
    if not cards and not any(st == "done" for _, st in stages):
        raise NotRun("nothing to summarise: the run directory holds no stage output")
    return {"cards": cards, "stages": stages, "method": sel.method if sel else None,
            "task_weights": sel.task_weights if sel else None, "problems": o.problems}


# ----------------------------------------------------------------------------- selection plots


def budget(v: View) -> dict[str, Any]:
    from presel.report.plots import share_bars

    sel = v.out.selection
    if sel is None:
        raise v.absent("selection", "selection/summary.json (presel select)")
    names = list(sel.tasks)
    pool_n = np.asarray([float(sel.tasks[t].images) for t in names])
    bud_n = np.asarray([float(sel.tasks[t].selected + sel.tasks[t].reference) for t in names])
    ps, bs = pool_n / (pool_n.sum() or 1.0), bud_n / (bud_n.sum() or 1.0)
    moved = sorted(zip((bs - ps).tolist(), names, strict=True))
    return {"plot": share_bars(names, ps.tolist(), bs.tolist()),
            "gain": moved[-1] if len(names) > 1 else None, "cut": moved[0] if len(names) > 1 else None}


def irs(v: View) -> dict[str, Any]:
    from presel.report.plots import irs_boxes

    scores = v.out.irs
    if scores is None:
        raise v.absent("irs", "irs/irs.parquet (presel score)")
    vals = scores.by_task()
    if not vals:
        raise NotRun("irs/irs.parquet holds no finite score")
    order = [r.task for r in sorted(v.rows, key=lambda r: (r.irs is None, r.irs or 0.0)) if r.task in vals]
    order += [t for t in vals if t not in order]
    plot = irs_boxes(order, [np.asarray(vals[t]) for t in order], [v.color(t) for t in order])
    return {"plot": plot, "n": sum(len(x) for x in vals.values())}


def clusters(v: View) -> dict[str, Any]:
    from presel.report.plots import cluster_hist

    a = v.assignments()
    size = Counter(zip(a.task, a.cluster, strict=True))
    per_task: dict[str, list[int]] = defaultdict(list)
    for (t, _), n in sorted(size.items()):
        per_task[t].append(n)
    if not per_task:
        raise NotRun("selection/assignments.parquet is empty")
    order = [r.task for r in v.rows if r.task in per_task] + [t for t in per_task if t not in v._colors]
    per_task = {t: per_task[t] for t in order}
    rows = [(t, len(s), min(s), float(np.median(s)), max(s), sum(1 for x in s if x == 1)) for t, s in per_task.items()]
    return {"plot": cluster_hist(per_task, {t: v.color(t) for t in per_task}), "rows": rows}


def centrality(v: View) -> dict[str, Any]:
    from presel.report.plots import centrality_grid

    a = v.assignments()
    per: dict[str, tuple[list[float], list[bool]]] = defaultdict(lambda: ([], []))
    for t, s, se, rf in zip(a.task, a.nc_score, a.selected, a.reference, strict=True):
        if s is not None and not rf and math.isfinite(s):
            per[t][0].append(float(s))
            per[t][1].append(bool(se))
    if not per:
        sel = v.out.selection
        how = f" (selection method '{sel.method}' does not score centrality)" if sel and sel.method != "presel" else ""
        raise NotRun("no neighbour-centrality score in selection/assignments.parquet" + how)
    shown = v.largest(list(per))
    plot = centrality_grid({t: (np.asarray(per[t][0]), np.asarray(per[t][1])) for t in shown})
    return {"plot": plot, "capped": len(per) if len(per) > len(shown) else None}


def maps(v: View) -> dict[str, Any]:
    from presel.records import image_key
    from presel.report.plots import pca_2d, pca_maps

    a = v.assignments()
    feats = v.out.features
    if feats is None:
        raise v.absent("features", "the feature store features/ (presel embed)")
    fm = feats.matrix()
    index = fm.index
    by_task: dict[str, list[tuple[int, bool, bool]]] = defaultdict(list)
    missing = 0
    for im, t, se, rf in zip(a.image, a.task, a.selected, a.reference, strict=True):
        row = index.get(image_key(im))
        if row is None:
            missing += 1
            continue
        by_task[t].append((row, bool(se), bool(rf)))
    if not by_task:
        raise NotRun("no image of selection/assignments.parquet has a vector in features/")
    rng = np.random.default_rng(0)
    panels = {}
    shown = v.largest(list(by_task))
    for t in shown:
        items = _thin(by_task[t], rng)
        xy, var = pca_2d(fm.rows(np.asarray([it[0] for it in items])))
        panels[t] = {"xy": xy, "selected": [it[1] for it in items], "reference": [it[2] for it in items],
                     "variance": var}
    return {"plot": pca_maps(panels), "missing": missing,
            "capped": len(by_task) if len(by_task) > len(shown) else None}


def _thin(items: list[tuple[int, bool, bool]], rng: np.random.Generator) -> list[tuple[int, bool, bool]]:
    """At most MAP_POINTS items: every selected and reference one, a seeded sample of the rest."""
    if len(items) <= MAP_POINTS:
        return items
    keep = [k for k, it in enumerate(items) if it[1] or it[2]]
    rest = [k for k, it in enumerate(items) if not (it[1] or it[2])]
    n = max(0, MAP_POINTS - len(keep))
    keep += sorted(rng.choice(rest, size=min(n, len(rest)), replace=False).tolist()) if rest else []
    return [items[k] for k in sorted(keep)]


def gallery(v: View) -> dict[str, Any]:
    a = v.assignments()
    per: dict[str, list[tuple[float, str, str, bool]]] = defaultdict(list)
    for i, im, t, s, se, rf in zip(a.id, a.image, a.task, a.nc_score, a.selected, a.reference, strict=True):
        if s is not None and not rf and math.isfinite(s):
            per[t].append((float(s), i, im, bool(se)))
    if not per:
        raise NotRun("no neighbour-centrality score in selection/assignments.parquet")
    blocks, shown, missing = [], 0, 0
    for t in v.largest(list(per)):
        items = sorted(per[t], key=lambda x: (-x[0], x[1]))
        k = min(GALLERY_K, len(items) // 2 if len(items) > 1 else 1)
        groups = []
        for label, group in (("most central", items[:k]), ("least central", items[::-1][:k])):
            figs = [_thumb(v, *it) for it in group]
            shown += len(figs)
            missing += sum(1 for f in figs if f["uri"] is None)
            groups.append({"label": label, "figs": figs})
        blocks.append({"task": t, "color": v.color(t), "groups": groups})
    if shown and missing == shown:
        where = ", ".join(str(r) for r in v.image_roots()) or "none found"
        raise NotRun(f"no image file found under the run's image root ({where}); pass --image-root DIR")
    return {"blocks": blocks, "missing": missing, "capped": len(per) if len(per) > len(blocks) else None}


def _thumb(v: View, score: float, rid: str, image: str, selected: bool) -> dict[str, Any]:
    return {"uri": v.thumbnail(image), "id": rid, "score": score, "selected": selected}


# ----------------------------------------------------------------------------- near duplicates


def neardup(v: View) -> dict[str, Any]:
    d = v.out.dedup
    if d is None:
        raise v.absent("dedup", "dedup/ (presel dedup, or a 'dedup' section in presel run)")
    sel = v.out.selection
    rows: dict[int, list[dict[str, Any]]] = defaultdict(list)
    g = d.rows
    for gid, key, keep, size, sim, tasks in zip(g.group, g.key, g.keep, g.size, g.sim_to_kept, g.tasks, strict=True):
        if gid < DEDUP_GROUPS:
            rows[gid].append({"key": key, "keep": bool(keep), "size": size, "sim": sim, "tasks": tasks or ""})
    groups, shown, missing = [], 0, 0
    for gid in sorted(rows):
        members = sorted(rows[gid], key=lambda m: not m["keep"])  # the kept image first
        for m in members[:DEDUP_THUMBS]:
            m["uri"] = v.thumbnail(m["key"])
            shown += 1
            missing += m["uri"] is None
        groups.append({"group": gid, "size": members[0]["size"], "members": members[:DEDUP_THUMBS]})
    return {"d": d, "groups": groups, "missing": missing, "shown": shown,
            "content_duplicates": sel.content_duplicate_images if sel else None,
            "near_dropped": sel.near_duplicate_images_dropped if sel else None}


# ----------------------------------------------------------------------------- rejects, timings, training


def rejects(v: View) -> dict[str, Any]:
    parts = []
    for rel, what, rows in v.out.rejects():
        if rows is None:
            continue
        reasons = Counter(r.reason[:80] for r in rows).most_common(5)
        parts.append({"file": rel, "what": what, "n": len(rows), "reasons": reasons, "rows": rows[:50]})
    if not parts:
        raise NotRun("no rejects files (features/rejects.jsonl, irs/rejected.jsonl, generate/failures.jsonl)")
    return {"parts": parts}


def timings(v: View) -> dict[str, Any]:
    from presel.report.plots import _fmt_seconds, timing_bars

    t = v.out.timings
    if not t:
        raise v.absent("timings", "timings.json (written by presel run)")
    return {"plot": timing_bars(t), "total": _fmt_seconds(sum(t.values())), "n": len(t)}


def training(v: View) -> dict[str, Any]:
    from presel.report.plots import loss_curves

    groups = v.out.train_logs()
    series: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    rows = []
    for g, logs in groups.items():
        for name, log in logs.items():
            pts = [(float(s), x) for s, x in zip(log.step, log.loss, strict=True) if math.isfinite(x)]
            if not pts:
                continue
            series.setdefault(g, {})[name] = ([p[0] for p in pts], [p[1] for p in pts])
            rows.append((name, len(pts), max(log.epoch), pts[0][1], pts[-1][1], min(p[1] for p in pts)))
    if not series:
        bad = [e for k, e in v.out.errors.items() if k in ("ref_model", "final_model") or k.startswith("compare/")]
        raise NotRun(f"could not read it: {bad[0]}" if bad else
                     "needs ref_model/train_log.jsonl or final_model/train_log.jsonl (fine-tuning)")
    return {"plot": loss_curves(series), "rows": rows}


def generation(v: View) -> dict[str, Any]:
    g = v.out.generation
    if g is None:
        raise v.absent("generation", "generate/summary.json (presel generate)")
    return {"g": g}


def evaluation(v: View) -> dict[str, Any]:
    ev = v.out.evaluation
    if not ev:
        raise v.absent("evaluation", "evaluation.json (presel demo --compare)")
    names = list(ev)
    tasks = sorted({t for m in ev.values() for t in m.accuracy})
    ref = "full" if "full" in ev else None
    relative = None
    if ref is not None:
        relative = []
        for n in names:
            r = [ev[n].accuracy[t] / ev[ref].accuracy[t] for t in tasks
                 if t in ev[n].accuracy and ev[ref].accuracy.get(t, 0) > 0]
            relative.append(float(np.mean(r)) if r else None)
    return {"names": names, "tasks": tasks, "ev": ev, "ref": ref, "relative": relative}


def quality(v: View) -> dict[str, Any]:
    import base64

    q = v.out.quality
    if q is None:
        raise NotRun("no bench/quality.png (benchmarks/quality.py)")
    uri = "data:image/png;base64," + base64.b64encode(q.png.read_bytes()).decode("ascii")
    data = q.data
    if isinstance(data, dict) and isinstance(data.get("summary"), list):  # benchmarks/quality.py: meta, summary, rows
        data = data["summary"]
        means = [r for r in data if isinstance(r, dict) and r.get("task") == "mean"]
        data = means or data
    return {"plot": uri, "table": flat_table(data)}


def flat_table(data: Any) -> tuple[list[str], list[list[Any]]] | None:
    """(header, rows) of a flat JSON object (key, value) or a list of flat objects; None for other shapes."""
    def scalar(x: Any) -> bool:
        return x is None or isinstance(x, (str, int, float, bool))

    if isinstance(data, dict) and data and all(scalar(x) for x in data.values()):
        return ["name", "value"], [[k, x] for k, x in data.items()]
    if isinstance(data, list) and data and all(isinstance(r, dict) and all(scalar(x) for x in r.values()) for r in data):
        head = list(dict.fromkeys(k for r in data for k in r))
        return head, [[r.get(k) for k in head] for r in data[:100]]
    return None


# (section id, title, function); the order of the page
SECTIONS = (
    ("overview", "Overview", overview),
    ("tasks", "Tasks", tasks),
    ("budget", "Budget share vs pool share", budget),
    ("irs", "Instruction relevance (IRS)", irs),
    ("clusters", "Cluster sizes", clusters),
    ("centrality", "Neighbour centrality", centrality),
    ("maps", "Feature maps", maps),
    ("gallery", "Most and least central images", gallery),
    ("neardup", "Near-duplicates", neardup),
    ("rejects", "Rejects", rejects),
    ("timings", "Stage timings", timings),
    ("training", "Fine-tuning loss", training),
    ("generation", "Instruction generation", generation),
    ("evaluation", "Evaluation", evaluation),
    ("quality", "Selection quality", quality),
)
