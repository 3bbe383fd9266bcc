"""Helpers for the selection tests: a tiny generated pool."""

import json

import numpy as np


def make_pool(root, tasks=None, *, d=16, shared=0, seed=0, ids_as="id", extra_records=(), ref=("a3", "b4")):
    """Write a tiny clustered pool: pool.jsonl, feats.npy (+ ids.txt), weights.json, ref.txt.

    ``tasks``: name -> number of own images. ``shared``: the first ``shared`` images of task 'a'
    are also used by task 'b' (records 'b_s<i>', no features of their own).
    """
    tasks = tasks or {"a": 120, "b": 80, "c": 40}
    rng = np.random.default_rng(seed)
    recs, feats, ids = [], [], []
    for t, n in tasks.items():
        centres = rng.standard_normal((3, d)) * 2
        for i in range(n):
            rid = f"{t}{i}"
            recs.append({"id": rid, "image": f"img/{t}/{i}.jpg", "task": t})
            ids.append(rid if ids_as == "id" else f"img/{t}/{i}.jpg")
            feats.append(centres[i % 3] + rng.standard_normal(d))
    for i in range(shared):
        recs.append({"id": f"b_s{i}", "image": f"img/a/{i}.jpg", "task": "b"})
    recs.extend(extra_records)
    (root / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    np.save(root / "feats.npy", np.asarray(feats, dtype=np.float16))
    (root / "ids.txt").write_text("\n".join(ids) + "\n")
    w = {t: {"score": 1.0, "weight": 1.0 / (i + 1), "n": 3} for i, t in enumerate(tasks)}
    (root / "weights.json").write_text(json.dumps(w))
    (root / "ref.txt").write_text("".join(r + "\n" for r in ref))
    return {k: root / v for k, v in (("pool", "pool.jsonl"), ("features", "feats.npy"), ("ids", "ids.txt"),
                                      ("weights", "weights.json"), ("reference", "ref.txt"))}
