"""``protocol: official``: PreSel step 2 exactly as the authors' code runs it, counted in records.

Reproduces ``data_process/kmeans_clust.py`` and ``data_process/clust_utils.py`` of the authors'
repository (https://github.com/bardisafa/PreSel, commit 2dd6709); written from their description, not
copied. ``protocol: paper`` (the default, :mod:`presel.selection.select`) is presel's reading of the
paper's text, counted in distinct images; ``docs/reproduce.md`` lists every difference.

The rules (``R`` = records of the pool, ``n`` = records of a task, in pool order):

- Everything is a record: an image with several records in a task is clustered, scored and picked once
  per record; an image in several tasks is picked independently in each.
- New picks: a budget fraction ``f`` counts rounds of 5%, as the authors' round loop:
  ``N = (f / 0.05 - 1) * max(1, int(R * 5 / 100))`` when ``f`` is a multiple of 5% (15%: two rounds),
  else ``int(R * (f - 0.05))``; ``budget_count`` gives ``N = budget_count - |reference records|``.
  The reference records are extra: never counted against ``N``.
- Task quota ``N_i = int(w_i * N)``; the whole shortfall goes to the top-weighted task; no cap at what a
  task holds (``kmeans_clust.py``, LLaVA-665K). ``official_quotas: vision-flan``: their ``allocate_samples``
  instead (``kmeans_clust_vf.py``: floor, +1 by largest remainder, caps; :func:`task_quotas_vision_flan`).
- Clusters per task: ``max(1, int(0.01 * n))`` over all its records (reference included), L2-normalised in
  float32 as ``sklearn.preprocessing.normalize``, clustered as scikit-learn 1.2.2's
  ``KMeans(n_clusters, random_state=12345)`` (the version LLaVA pins: ten inits, ``randint`` first centre),
  whatever scikit-learn is installed (:mod:`presel.selection.sklearn122`).
- Cluster quota ``int(round(avail_c / avail * N_i))`` (round half to even) capped at ``avail_c``; then one
  pass: while short, +1 per cluster with room, largest cluster (all records) first; while over, -1 per
  non-empty cluster, smallest first. One pass can leave a task short.
- Inside a cluster, its available (non-reference) records, listed as their ``set(...) & available``
  lists them, ranked by mean inner product (float32) to their ``k = min(5, m - 1)`` nearest: ``k + 1``
  neighbours searched (faiss ``IndexFlatIP``), the first column dropped as "self"; ``np.argsort(-score)``
  orders them (ties as numpy's default sort leaves them, NaN last). A one-record cluster scores NaN and is
  still picked.
- A total short of ``N`` after all tasks is filled as the authors' ``presel/data_selection.py`` tops the
  round up: ``random.seed(12345)``, ``random.sample`` over the non-reference, unpicked records in pool order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

import numpy as np

from presel.errors import PreselError
from presel.records import Pool, image_key

ROUND_FRACTION = Fraction(5, 100)  # the authors' rounds: 5% of the records each (round 1 = the reference set)
KMEANS_RANDOM_STATE = 12345
KMEANS_N_INIT = 10
CLUSTER_FRACTION = 0.01
TOPUP_SEED = 12345  # the authors' ``--seed`` default: ``random.seed(12345)`` before ``random.sample``


def n_clusters_official(n: int) -> int:
    """``max(1, int(0.01 * n))`` clusters for a task of ``n`` records (the authors' rule), never more than ``n``."""
    if n <= 0:
        return 0
    return int(min(n, max(1, int(CLUSTER_FRACTION * n))))


def new_picks_official(n_records: int, budget: float | None, budget_count: int | None, n_reference: int) -> int:
    """How many records the authors' code picks beyond the reference set."""
    if budget_count is not None:
        return int(budget_count) - n_reference
    f = Fraction(repr(float(budget)))
    rounds = f / ROUND_FRACTION
    if rounds.denominator == 1:
        return (int(rounds) - 1) * max(1, int(n_records * 5 / 100))
    return int(n_records * (float(budget) - 0.05))


def task_quotas_official(weights: np.ndarray, n_new: int) -> np.ndarray:
    """``int(w_i * N)`` per task, the whole shortfall to the top-weighted task (first on ties)."""
    w = np.asarray(weights, dtype=np.float64)
    q = (w * n_new).astype(np.int64)
    diff = int(n_new - q.sum())
    if diff > 0:
        q[int(np.argmax(w))] += diff
    elif diff < 0:
        q[int(np.argmin(w))] += diff
    return q


def task_quotas_vision_flan(weights: np.ndarray, sizes: list[int] | np.ndarray, n_new: int) -> np.ndarray:
    """The authors' ``allocate_samples`` (Vision-FLAN, ``clust_utils.py``): quotas from weights ``w`` and task sizes.

    The budget is capped at the records of all tasks; each task gets ``floor(w_i * N)``; the shortfall goes
    +1 per task in descending order of the fractional parts (stable: task order on ties) to tasks with room
    (``size - quota > 0``), one pass; quotas over a task's size are cut to it and the excess is handed out
    again +1 per task with room, round-robin in task order, until spent. Sizes count every record of the task,
    reference records included, as theirs do.
    """
    w = [float(x) for x in np.asarray(weights, dtype=np.float64)]
    size = [int(x) for x in sizes]
    total = min(int(n_new), sum(size))
    exact = [wi * total for wi in w]
    alloc = [int(math.floor(x)) for x in exact]
    surplus = total - sum(alloc)
    frac = [x - a for x, a in zip(exact, alloc)]
    for i in sorted(range(len(w)), key=lambda i: frac[i], reverse=True):
        if surplus <= 0:
            break
        if size[i] - alloc[i] > 0:
            alloc[i] += 1
            surplus -= 1
    for i in range(len(w)):
        if alloc[i] > size[i]:
            surplus += alloc[i] - size[i]
            alloc[i] = size[i]
    room = [i for i in range(len(w)) if alloc[i] < size[i]]
    while surplus > 0 and room:
        for i in room:
            if surplus <= 0:
                break
            alloc[i] += 1
            surplus -= 1
        room = [i for i in range(len(w)) if alloc[i] < size[i]]
    return np.array(alloc, dtype=np.int64)


def cluster_quotas_official(labels: np.ndarray, avail: np.ndarray, n: int) -> dict[int, int]:
    """Records to take per cluster label: proportional rounding, cap, then one +1/-1 pass (see the module doc)."""
    uniq, counts = np.unique(labels, return_counts=True)
    size = {int(c): int(k) for c, k in zip(uniq, counts)}
    avail_c = {int(c): int((avail & (labels == c)).sum()) for c in uniq}
    total = int(avail.sum())
    quota = {}
    for c in size:
        share = avail_c[c] / total if total > 0 else 0
        quota[c] = min(int(round(share * n)), avail_c[c])
    got = sum(quota.values())
    if got < n:
        short = n - got
        for c in sorted(size, key=lambda c: size[c], reverse=True):  # stable: label order on ties
            if quota[c] < avail_c[c]:
                quota[c] += 1
                short -= 1
                if short == 0:
                    break
    elif got > n:
        over = got - n
        for c in sorted(size, key=lambda c: size[c]):
            if quota[c] > 0:
                quota[c] -= 1
                over -= 1
                if over == 0:
                    break
    return quota


def centrality_official(x: np.ndarray) -> np.ndarray:
    """Mean inner product to the ``min(5, m - 1)`` nearest rows of ``x``: ``k + 1`` searched, first column dropped."""
    from presel.selection.kmeans import _import_faiss

    m = x.shape[0]
    k = min(5, m - 1)
    if k <= 0:
        return np.full(m, np.nan)
    faiss = _import_faiss()
    x = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, _ = index.search(x, k + 1)
    return sims[:, 1:].mean(axis=1)  # float32, as the authors' ``similarities.mean(axis=1)``


def _kmeans_labels(x: np.ndarray, n_clusters: int) -> tuple[np.ndarray, float | None]:
    """scikit-learn 1.2.2's ``KMeans(n_clusters, random_state=12345)`` labels, whatever scikit-learn is installed."""
    if n_clusters <= 1:
        return np.zeros(len(x), dtype=np.int64), None
    from presel.selection.sklearn122 import kmeans_122

    labels, inertia, _ = kmeans_122(x, n_clusters, random_state=KMEANS_RANDOM_STATE, n_init=KMEANS_N_INIT)
    return labels, inertia


def _cluster_members(labels: np.ndarray, is_ref: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Per cluster label (ascending), its available rows in the order the authors' code lists them.

    They list ``set(cluster rows) & available`` with ``available = set(range(n)) - reference``; CPython's
    set order for integers is fixed, so the same expressions give the same order here, and the ranking
    ``np.argsort(-typicality)`` then breaks ties (records of one image) the way theirs does.
    """
    n = len(labels)
    available = set(range(n)) - {int(i) for i in np.nonzero(is_ref)[0]}
    out = []
    for lab in np.unique(labels):
        mem = list(set(np.nonzero(labels == lab)[0].tolist()) & available)
        out.append((int(lab), np.array(mem, dtype=np.int64)))
    return out


def _record_rows(features, pool: Pool, positions: list[int]) -> np.ndarray:
    index = features.index
    rows = np.empty(len(positions), dtype=np.int64)
    missing = []
    for j, p in enumerate(positions):
        r = pool.records[p]
        row = index.get(r.id)
        if row is None:
            row = index.get(r.image_key)
        if row is None:
            missing.append(r)
            row = -1
        rows[j] = row
    if missing:
        shown = ", ".join(f"'{r.id}' ({r.image})" for r in missing[:5])
        raise PreselError(f"{features.source}: no features for {len(missing)} pool record(s), e.g. id {shown}; features "
                          "are looked up by record id, then by image path: embed the whole pool (presel embed) or pass "
                          "the matching --features/--feature-ids")
    return rows


def _normalised(features, rows: np.ndarray, pool: Pool, positions: list[int]) -> np.ndarray:
    """float32 rows L2-normalised as ``sklearn.preprocessing.normalize`` (norms in float32, one einsum)."""
    from presel.selection.sklearn122 import l2_normalise

    x = np.asarray(features.rows(rows), dtype=np.float32)
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        r = pool.records[positions[int(np.nonzero(bad)[0][0])]]
        raise PreselError(f"{features.source}: features of id '{r.id}' (image {r.image}) are zero, NaN or inf and "
                          "cannot be L2-normalised; re-extract the features of that image")
    return l2_normalise(x)


def _reference_positions(pool: Pool, reference: Iterable[str], source: str) -> set[int]:
    """Pool positions of the reference records: a record id names that record, an image path every record of it."""
    by_id = pool.by_id()
    by_key: dict[str, list[int]] | None = None
    out: set[int] = set()
    for rid in reference:
        rid = str(rid)
        i = by_id.get(rid)
        if i is not None:
            out.add(i)
            continue
        if by_key is None:
            by_key = {}
            for j, r in enumerate(pool.records):
                by_key.setdefault(r.image_key, []).append(j)
        hits = by_key.get(image_key(rid))
        if not hits:
            raise PreselError(f"{source}: reference id '{rid}' is not in the pool {pool.source} (neither a record id nor "
                              "an image path); the reference set must be drawn from the pool: fix the id or the --pool")
        out.update(hits)
    return out


def select_official(pool: Pool, features, *, weights: Mapping[str, Any] | None, reference: Iterable[str], config,
                    weights_source: str = "weights", reference_source: str = "reference"):
    """The authors' step 2 on ``pool`` (see the module doc). Returns a :class:`SelectionResult` whose rows are records."""
    from presel.selection.result import SelectionResult
    from presel.selection.result import task_weights as _task_weights

    cfg = config
    if cfg.method != "presel":
        raise PreselError(f"protocol=official reproduces the authors' PreSel selection only; method={cfg.method!r} "
                          "runs with protocol=paper")
    tasks: dict[str, list[int]] = {}
    for i, r in enumerate(pool.records):
        tasks.setdefault(r.task, []).append(i)
    names = list(tasks)
    n_records = len(pool.records)
    n_images = len({r.image_key for r in pool.records})
    ref = _reference_positions(pool, reference, reference_source)
    n_new = new_picks_official(n_records, cfg.budget, cfg.budget_count, len(ref))
    what = f"budget_count={cfg.budget_count}" if cfg.budget_count is not None else f"budget={cfg.budget}"
    if n_new <= 0:
        raise PreselError(f"{what} leaves no new picks beyond the {len(ref)} reference records (protocol official "
                          "counts records); raise the budget")
    if n_new > n_records - len(ref):
        raise PreselError(f"{what} means {n_new} new records but only {n_records - len(ref)} non-reference records "
                          "exist; lower the budget")

    class _T:  # noqa: D401 - a plain holder, like select._Task
        pass

    holders = []
    for name in names:
        t = _T()
        t.name, t.ids = name, [pool.records[p].id for p in tasks[name]]
        holders.append(t)
    w = _task_weights(cfg, holders, weights, weights_source) if cfg.task_weights != "size" else \
        np.array([len(tasks[n]) for n in names], dtype=np.float64) / n_records
    if cfg.official_quotas == "vision-flan":
        quotas = task_quotas_vision_flan(w, [len(tasks[n]) for n in names], n_new)
    else:
        quotas = task_quotas_official(w, n_new)

    per_task: dict[str, Any] = {}
    cols: dict[str, list] = {k: [] for k in ("id", "image", "task", "cluster", "nc_score", "score", "rank",
                                             "selected", "reference")}
    sel_rows: list[tuple] = []
    picked_pos: set[int] = set()
    objectives = []
    for ti, name in enumerate(names):
        pos = tasks[name]
        n = len(pos)
        is_ref = np.fromiter((p in ref for p in pos), dtype=bool, count=n)
        avail = ~is_ref
        x = _normalised(features, _record_rows(features, pool, pos), pool, pos)
        c = n_clusters_official(n)
        labels, obj = _kmeans_labels(x, c)
        if obj is not None:
            objectives.append(obj)
        score = np.full(n, np.nan)
        rank = np.zeros(n, dtype=np.int64)
        selected = np.zeros(n, dtype=bool)
        cq = cluster_quotas_official(labels, avail, int(quotas[ti]))
        for lab, mem in _cluster_members(labels, is_ref):
            if not len(mem):
                continue
            s = centrality_official(x[mem])
            score[mem] = s
            order = mem[np.argsort(-s)]  # the authors' order: their set order, numpy's default sort, NaN last
            rank[order] = np.arange(1, len(order) + 1)
            selected[order[:cq[lab]]] = True
        del x
        for j, p in enumerate(pos):
            r = pool.records[p]
            cols["id"].append(r.id)
            cols["image"].append(r.image)
            cols["task"].append(name)
            cols["cluster"].append(int(labels[j]))
            cols["nc_score"].append(None if is_ref[j] or math.isnan(score[j]) else float(score[j]))
            cols["score"].append(cols["nc_score"][-1])
            cols["rank"].append(int(rank[j]) if rank[j] > 0 else None)
            cols["selected"].append(bool(selected[j]))
            cols["reference"].append(bool(is_ref[j]))
            if is_ref[j]:
                sel_rows.append((ti, int(labels[j]), 0, 0, p, r.id, r.image, name, None, "reference"))
            elif selected[j]:
                picked_pos.add(p)
                sel_rows.append((ti, int(labels[j]), 1, int(rank[j]), p, r.id, r.image, name,
                                 cols["nc_score"][-1], "selected"))
        per_task[name] = {"records": n, "images": len({pool.records[p].image_key for p in pos}),
                          "reference": int(is_ref.sum()), "available": int(avail.sum()),
                          "clusters": int(len(np.unique(labels))), "weight": float(w[ti]), "quota": int(quotas[ti]),
                          "selected": int(selected.sum()), "kmeans_objective": obj}

    picked = sum(t["selected"] for t in per_task.values())
    fill = n_new - picked
    if fill > 0:  # the authors' data_selection.py tops the round up: random.seed(12345); random.sample(...)
        free = [p for p in range(n_records) if p not in ref and p not in picked_pos]
        extra = np.sort(np.array(random.Random(TOPUP_SEED).sample(free, min(fill, len(free))), dtype=np.int64))
        task_pos = {n: i for i, n in enumerate(names)}
        for p in extra.tolist():
            r = pool.records[p]
            sel_rows.append((task_pos[r.task], -1, 2, 0, p, r.id, r.image, r.task, None, "selected"))
            per_task[r.task]["selected"] += 1
            per_task[r.task]["random_fill"] = per_task[r.task].get("random_fill", 0) + 1
        # the assignment row of a random pick says selected too
        where = {(t, i): j for j, (t, i) in enumerate(zip(cols["task"], cols["id"]))}
        for p in extra.tolist():
            r = pool.records[p]
            cols["selected"][where[(r.task, r.id)]] = True
    sel_rows.sort(key=lambda r: (r[0], r[1], r[2], r[3], r[4]))
    selection = {"id": [r[5] for r in sel_rows], "image": [r[6] for r in sel_rows], "task": [r[7] for r in sel_rows],
                 "cluster": [None if r[1] < 0 else r[1] for r in sel_rows], "nc_score": [r[8] for r in sel_rows],
                 "score": [r[8] for r in sel_rows],
                 "rank": [r[3] if r[9] == "selected" and r[3] > 0 else None for r in sel_rows],
                 "source": [r[9] for r in sel_rows]}
    n_selected = sum(1 for r in sel_rows if r[9] == "selected")
    summary = {
        "method": cfg.method,
        "protocol": "official",
        "task_weights": cfg.task_weights,
        "official_quotas": cfg.official_quotas,
        "tasks": per_task,
        "totals": {
            "records": n_records, "distinct_images": n_images, "text_only_records": pool.text_only,
            "tasks": len(names), "unit": "records", "budget": len(ref) + n_new, "reference": len(ref),
            "new_budget": n_new, "selected": n_selected, "total": len(ref) + n_selected,
            "random_fill": max(0, fill), "selected_images": len({pool.records[r[4]].image_key for r in sel_rows}),
            "kmeans_objective": float(sum(objectives)) if objectives else None,
            "kmeans": {"backend": "sklearn-1.2.2-seeding", "random_state": KMEANS_RANDOM_STATE, "n_init": KMEANS_N_INIT},
        },
    }
    return SelectionResult(selection, cols, summary, cfg)
