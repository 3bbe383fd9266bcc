"""Helper of scripts/check-official.sh: presel's ``protocol: official`` against a real scikit-learn 1.2.2.

    python check_official.py problems DIR   # write the 20 k-means problems and the authors'-shaped pool
    python check_official.py presel DIR     # (presel's environment) presel's labels and picks
    python check_official.py sk122 DIR      # (a scikit-learn 1.2.2 venv) KMeans(random_state=12345) labels, and
                                            #   the authors' selection rule written out again on those labels
    python check_official.py compare DIR    # print the comparison; exit 1 when under target

The ``sk122`` side imports nothing from presel: its selection rule is an independent re-statement of the
authors' ``typical_sample_selection`` (their code is not copied here) run on the real 1.2.2 clusters.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np

# (n, d): n from 150 to 20,000; d 768 up to 5,000 records, 64 beyond (keeps the run to minutes on a few cores)
PROBLEMS = [(150, 768), (300, 64), (600, 768), (1000, 64), (1500, 768), (2000, 64), (3000, 768), (4000, 64),
            (5000, 768), (6000, 64), (7000, 64), (8000, 64), (9000, 64), (10000, 64), (12000, 64), (14000, 64),
            (16000, 64), (18000, 64), (19000, 768), (20000, 64)]
N_TASKS = 10
POOL_RECORDS = 3200


def problem(seed: int, n: int, d: int) -> np.ndarray:
    """L2-normalised float32 rows around ``n // 40`` centres, some rows repeated (records of one image)."""
    rs = np.random.RandomState(seed)
    centres = rs.randn(max(2, n // 40), d).astype(np.float32)
    m = max(1, int(n * 0.8))
    x = centres[rs.randint(len(centres), size=m)] + 0.7 * rs.randn(m, d).astype(np.float32)
    x = np.concatenate([x, x[rs.randint(m, size=n - m)]])[rs.permutation(n)]
    return (x / np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]).astype(np.float32)


def write_problems(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for i, (n, d) in enumerate(PROBLEMS):
        np.save(out / f"problem{i:02d}.npy", problem(1000 + i, n, d))
    # the authors'-shaped pool: 10 tasks in one mixed file, COCO images shared by tasks, 1-4 records per image
    rs = np.random.RandomState(7)
    n_coco = 900
    records, k = [], 0
    for t in range(N_TASKS):
        share = 0.6 if t < 6 else 0.0  # six tasks draw on the shared COCO images, four have their own
        n_t = POOL_RECORDS // N_TASKS
        while n_t > 0:
            img = (f"coco/{rs.randint(n_coco):06d}.jpg" if rs.rand() < share else f"task{t}/{k:06d}.jpg")
            per = min(n_t, 1 + rs.randint(4))
            for _ in range(per):
                records.append({"id": f"r{k}", "image": img, "task": f"task{t}", "unique_idx": k})
                k += 1
            n_t -= per
    order = rs.permutation(len(records))
    records = [records[i] for i in order]
    for i, r in enumerate(records):  # unique_idx = position in the mixed file, as in the 665K file
        r["unique_idx"] = i
    images = sorted({r["image"] for r in records})
    centres = rs.randn(40, 768).astype(np.float32)
    feats = centres[rs.randint(40, size=len(images))] + 0.8 * rs.randn(len(images), 768).astype(np.float32)
    tasks = sorted({r["task"] for r in records})
    reference = []
    for t in tasks:  # 5% of each task's records
        ids = [r["unique_idx"] for r in records if r["task"] == t]
        reference += sorted(rs.choice(ids, size=max(1, int(0.05 * len(ids))), replace=False).tolist())
    w = np.exp(rs.randn(len(tasks)))
    weights = {t: float(v) for t, v in zip(tasks, w / w.sum())}
    (out / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    np.save(out / "pool_feats.npy", feats)
    (out / "pool_ids.txt").write_text("\n".join(images) + "\n")
    (out / "pool_meta.json").write_text(json.dumps({"reference": reference, "weights": weights}))


def _pool(out: Path):
    records = [json.loads(line) for line in (out / "pool.jsonl").read_text().splitlines()]
    meta = json.loads((out / "pool_meta.json").read_text())
    feats = np.load(out / "pool_feats.npy")
    row = {p: i for i, p in enumerate((out / "pool_ids.txt").read_text().split())}
    return records, meta, feats, row


def _once(out: Path, who: str, i: int, fit) -> None:
    """``fit(X)`` labels of problem ``i`` into ``out/{who}_pNN.npy`` unless there already (a rerun resumes)."""
    import time

    path = out / f"{who}_p{i:02d}.npy"
    if path.exists():
        return
    x = np.load(out / f"problem{i:02d}.npy")
    t0 = time.perf_counter()
    labels = np.asarray(fit(x), dtype=np.int64)
    np.save(path.with_suffix(".tmp.npy"), labels)
    path.with_suffix(".tmp.npy").rename(path)
    print(f"{who}: problem {i:02d} ({PROBLEMS[i][0]} x {PROBLEMS[i][1]}) {time.perf_counter() - t0:.1f} s", flush=True)


def run_presel(out: Path) -> None:
    from presel.io.features import load_features
    from presel.io.manifest import read_pool
    from presel.selection import SelectConfig, select
    from presel.selection.official import n_clusters_official
    from presel.selection.sklearn122 import kmeans_122

    for i in range(len(PROBLEMS)):
        _once(out, "presel", i, lambda x: kmeans_122(x, n_clusters_official(len(x)))[0])
    records, meta, _, _ = _pool(out)
    pool = read_pool(out / "pool.jsonl")
    fm = load_features(out / "pool_feats.npy", out / "pool_ids.txt")
    by_idx = {r["unique_idx"]: r["id"] for r in records}
    res = select(pool, fm, weights=meta["weights"], reference=[by_idx[u] for u in meta["reference"]],
                 config=SelectConfig(budget=0.15, protocol="official"))
    rid = {r["id"]: r["unique_idx"] for r in records}
    picks = {rid[i]: [t, sc] for i, t, sc, s in zip(res.selection["id"], res.selection["task"],
                                                     res.selection["nc_score"], res.selection["source"]) if s == "selected"}
    labels = {t: [] for t in sorted({r["task"] for r in records})}
    for t, c in zip(res.assignments["task"], res.assignments["cluster"]):
        labels[t].append(c)
    _write_picks(out / "picks_presel.json", picks, labels)


def _write_picks(path: Path, picks: dict, labels: dict) -> None:
    """``{"picks": {unique_idx: [task, score or None]}, "labels": {task: [cluster per record, pool order]}}``."""
    clean = {str(int(u)): [t, None if sc is None or sc != sc else float(sc)] for u, (t, sc) in sorted(picks.items())}
    path.write_text(json.dumps({"picks": clean, "labels": {t: [int(c) for c in v] for t, v in labels.items()}}))


def _authors_typical(x: np.ndarray, labels: np.ndarray, n_pick: int, ref_local: set[int]) -> dict[int, float]:
    """The authors' per-task rule re-stated: proportional cluster quotas, one +1/-1 pass, top typicality."""
    import faiss

    n = len(labels)
    uniq, counts = np.unique(labels, return_counts=True)
    size = dict(zip(uniq.tolist(), counts.tolist()))
    members = {c: np.where(labels == c)[0] for c in uniq.tolist()}
    avail = set(range(n)) - ref_local
    quota = {}
    for c in size:
        free = len(set(members[c]) & avail)
        quota[c] = min(int(round((free / len(avail) if avail else 0) * n_pick)), free)
    diff = n_pick - sum(quota.values())
    if diff > 0:
        for c in sorted(size, key=lambda c: size[c], reverse=True):
            if quota[c] < len(set(members[c]) & avail):
                quota[c] += 1
                diff -= 1
                if diff == 0:
                    break
    elif diff < 0:
        for c in sorted(size, key=lambda c: size[c]):
            if quota[c] > 0:
                quota[c] -= 1
                diff += 1
                if diff == 0:
                    break
    picked: dict[int, float] = {}
    for c in size:
        rows = list(set(members[c]) & avail)
        if quota[c] > 0 and rows:
            f = np.ascontiguousarray(x[rows], dtype=np.float32)
            index = faiss.IndexFlatIP(f.shape[1])
            index.add(f)
            sims, _ = index.search(f, min(5, len(rows) - 1) + 1)
            with np.errstate(all="ignore"):
                typ = sims[:, 1:].mean(axis=1)
            picked.update({rows[i]: float(typ[i]) for i in np.argsort(-typ)[:quota[c]]})
    return picked


def run_sk122(out: Path) -> None:
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.preprocessing import normalize

    warnings.simplefilter("ignore")
    for i in range(len(PROBLEMS)):
        _once(out, "sk122", i, lambda x: KMeans(n_clusters=max(1, int(0.01 * len(x))), random_state=12345).fit(x).labels_)
    records, meta, feats, row = _pool(out)
    ref = set(meta["reference"])
    tasks = sorted({r["task"] for r in records})
    n_new = 2 * max(1, int(len(records) * 5 / 100))  # 15%: rounds 2 and 3 of 5% each
    w = np.array([meta["weights"][t] for t in tasks])
    q = (w * n_new).astype(int)
    q[int(np.argmax(w))] += n_new - q.sum()
    picks: dict[int, list] = {}
    labels = {}
    for t, n_t in zip(tasks, q):
        recs = [r for r in records if r["task"] == t]
        x = normalize(feats[[row[r["image"]] for r in recs]], norm="l2")
        k = max(1, int(0.01 * len(recs)))
        lab = KMeans(n_clusters=k, random_state=12345).fit_predict(x)
        labels[t] = lab.tolist()
        local_ref = {i for i, r in enumerate(recs) if r["unique_idx"] in ref}
        for i, sc in _authors_typical(x, lab, int(n_t), local_ref).items():
            picks[recs[i]["unique_idx"]] = [t, sc]
    if len(picks) < n_new:
        random.seed(12345)
        rest = [r["unique_idx"] for r in records if r["unique_idx"] not in ref and r["unique_idx"] not in picks]
        task_of = {r["unique_idx"]: r["task"] for r in records}
        for u in random.sample(rest, n_new - len(picks)):
            picks[u] = [task_of[u], None]
    _write_picks(out / "picks_sk122.json", picks, labels)


def compare(out: Path) -> int:
    same = 0
    for i, (n, d) in enumerate(PROBLEMS):
        x, y = np.load(out / f"presel_p{i:02d}.npy"), np.load(out / f"sk122_p{i:02d}.npy")
        k = int(max(x.max(), y.max())) + 1
        ok = len(np.unique(x * k + y)) == len(np.unique(x)) == len(np.unique(y))
        same += ok
        print(f"problem {i:02d}: n={n:>6} k={max(1, int(0.01 * n)):>4} d={d:>3} identical labels={bool((x == y).all())} "
              f"same partition={ok}")
    print(f"partitions identical: {same}/{len(PROBLEMS)} (target >= 19)")
    a, b = json.loads((out / "picks_presel.json").read_text()), json.loads((out / "picks_sk122.json").read_text())
    tasks_same = sum(a["labels"][t] == b["labels"][t] for t in b["labels"])
    pa, pb = a["picks"], b["picks"]
    common = len(set(pa) & set(pb))

    def scores(p: dict, t: str) -> np.ndarray:  # the picked scores of a task, sorted (NaN and random picks as -1)
        return np.sort([-1.0 if sc is None else sc for tt, sc in p.values() if tt == t])

    def same_scores(t: str) -> bool:  # equal up to float32 rounding of the libraries (faiss, BLAS) underneath
        x, y = scores(pa, t), scores(pb, t)
        return len(x) == len(y) and bool(np.all(np.abs(x - y) <= 1e-6))

    tie_same = all(same_scores(t) for t in b["labels"])
    print(f"authors'-shaped pool ({POOL_RECORDS} records, {N_TASKS} tasks, budget 15%): cluster labels identical in "
          f"{tasks_same}/{len(b['labels'])} tasks; presel picks {len(pa)}, scikit-learn 1.2.2 + the authors' rule picks "
          f"{len(pb)}, the same records {common} ({100.0 * common / max(1, len(pb)):.2f}%); identical={set(pa) == set(pb)}; "
          f"identical up to records of equal score (within 1e-6) = {tie_same}")
    return 0 if same >= 19 and tasks_same == len(b["labels"]) and tie_same else 1


def main(argv: list[str]) -> int:
    mode, out = argv[0], Path(argv[1])
    if mode == "problems":
        write_problems(out)
    elif mode == "presel":
        run_presel(out)
    elif mode == "sk122":
        run_sk122(out)
    elif mode == "compare":
        return compare(out)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
