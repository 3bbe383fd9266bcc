"""``official_quotas: vision-flan``: the authors' ``allocate_samples`` (data_process/clust_utils.py of
bardisafa/PreSel) for Vision-FLAN: floor, +1 by largest remainder to tasks with room, caps, round-robin of the
excess. Expected values computed by hand below."""

import json

import numpy as np
import pytest

from presel.errors import PreselError
from presel.selection.official import task_quotas_official, task_quotas_vision_flan


def test_191_tasks_hand_computed():
    # 191 equal weights, N = 1000: exact 5.2356... each -> floor 5 (955), 45 left; equal remainders, so task order:
    # +1 to the first tasks with room. Task 3 holds only 2 records: no +1 there (2 - 5 < 0), so tasks 0-2 and 4-45
    # get 6; then task 3 is cut from 5 to 2 and its 3 go round-robin to the first tasks with room: 0, 1, 2 -> 7.
    sizes = [1000] * 191
    sizes[3] = 2
    q = task_quotas_vision_flan(np.full(191, 1 / 191), sizes, 1000)
    want = [7, 7, 7, 2] + [6] * 42 + [5] * 145
    assert q.tolist() == want and q.sum() == 1000
    # the LLaVA-665K rule on the same input: int(w * N) = 5 each, the whole shortfall (45) to the top task (first)
    old = task_quotas_official(np.full(191, 1 / 191), 1000)
    assert old.tolist() == [50] + [5] * 190
    assert sum(a != b for a, b in zip(q.tolist(), old.tolist())) == 46


def test_largest_remainder_order_and_budget_cap():
    # w = (0.5, 0.3, 0.2), N = 7: exact 3.5, 2.1, 1.4 -> floors 3, 2, 1 (6); one left to the largest remainder (0.5)
    assert task_quotas_vision_flan(np.array([0.5, 0.3, 0.2]), [10, 10, 10], 7).tolist() == [4, 2, 1]
    # the budget is capped at all records (here 6): 3, 1.8, 1.2 -> 3, 1, 1; +1 to task 1 (0.8)
    assert task_quotas_vision_flan(np.array([0.5, 0.3, 0.2]), [3, 2, 1], 10).tolist() == [3, 2, 1]


def test_select_uses_it_under_official(tmp_path):
    from presel.io.features import load_features
    from presel.io.manifest import read_pool
    from presel.selection import SelectConfig, select

    rng = np.random.default_rng(0)
    tasks = {f"t{i:02d}": n for i, n in enumerate([120, 80, 60, 40, 30, 20, 15, 10, 5, 3, 2, 1])}
    recs = [{"id": f"{t}-{j}", "image": f"{t}/{j}.jpg", "task": t} for t, n in tasks.items() for j in range(n)]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    np.save(tmp_path / "f.npy", rng.standard_normal((len(recs), 8)).astype(np.float32))
    (tmp_path / "ids.txt").write_text("\n".join(r["id"] for r in recs) + "\n")
    pool, fm = read_pool(tmp_path / "pool.jsonl"), load_features(tmp_path / "f.npy", tmp_path / "ids.txt")
    weights = {t: float(w) for t, w in zip(tasks, rng.uniform(0.5, 2, len(tasks)))}
    res = select(pool, fm, weights=weights, reference=[], config=SelectConfig(
        budget_count=70, protocol="official", official_quotas="vision-flan", task_weights="irs"))
    got = [res.summary["tasks"][t]["quota"] for t in tasks]
    w = np.array([res.summary["tasks"][t]["weight"] for t in tasks])
    assert got == task_quotas_vision_flan(w, list(tasks.values()), 70).tolist()
    assert res.summary["official_quotas"] == "vision-flan" and sum(got) == 70
    with pytest.raises(PreselError, match="official_quotas='x' must be one of llava665k, vision-flan"):
        SelectConfig(budget=0.1, protocol="official", official_quotas="x")
