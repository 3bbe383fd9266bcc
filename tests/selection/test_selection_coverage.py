"""Coverage rules (presel.selection.coverage) through the selection engine: exact quota, seeded
determinism, reference images never picked and counted as covered, near-duplicate clumps."""

import numpy as np
import pytest

from presel.io.features import FeatureMatrix
from presel.records import Pool, PoolRecord
from presel.selection import SelectConfig, select
from presel.selection.coverage import COVERAGE_METHODS, greedy_cover, herding_stage, kernel_matrix, knn


def _select(x, method, n, *, tasks=None, reference=(), seed=0, **kw):
    ids = [f"i{j:05d}" for j in range(len(x))]
    tasks = tasks if tasks is not None else ["t"] * len(x)
    pool = Pool([PoolRecord(i, f"{i}.png", t, j + 1) for j, (i, t) in enumerate(zip(ids, tasks))], "mem", ".")
    cfg = SelectConfig(budget_count=n, method=method, task_weights="uniform", seed=seed, **kw)
    res = select(pool, FeatureMatrix([(ids, np.ascontiguousarray(x, dtype=np.float32))], source="mem"),
                 reference=reference, config=cfg)
    return sorted(int(i[1:]) for i in res.selected_ids), res


def _blobs(seed=0, n=(300, 300, 300), clump=300, d=16):
    """Three separated blobs, and a dense clump of near-duplicates of one image apart from them."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3, d) * 12.0
    parts = [centres[b] + rng.standard_normal((m, d)) for b, m in enumerate(n)]
    dup = 12.0 * np.eye(1, d, 3)[0] + rng.standard_normal(d)
    parts.append(dup + 0.01 * rng.standard_normal((clump, d)))
    x = np.vstack(parts) + 3.0  # away from the origin so L2-normalising keeps the blobs apart
    blob = np.concatenate([np.full(m, b) for b, m in enumerate(n)] + [np.full(clump, 3)])
    return x.astype(np.float32), blob


@pytest.mark.parametrize("method", COVERAGE_METHODS)
def test_exact_quota_deterministic_and_never_a_reference(method):
    x, _ = _blobs(n=(60, 50, 40), clump=30)
    tasks = ["a"] * 90 + ["b"] * 90
    ref = [f"i{j:05d}" for j in (0, 7, 100, 150)]
    picks, res = _select(x, method, 40, tasks=tasks, reference=ref, seed=3)
    assert len(picks) == 36 and res.summary["totals"]["total"] == 40
    assert not set(picks) & {0, 7, 100, 150}
    again, _ = _select(x, method, 40, tasks=tasks, reference=ref, seed=3)
    assert again == picks
    for n in (5, 17, 180):  # every size up to the whole pool
        assert len(_select(x, method, n)[0]) == n


@pytest.mark.parametrize("method", COVERAGE_METHODS)
def test_reference_counts_as_covered(method):
    rng = np.random.default_rng(1)
    a = np.array([10.0, 0, 0, 0]) + 0.3 * rng.standard_normal((40, 4))
    b = np.array([0, 10.0, 0, 0]) + 0.3 * rng.standard_normal((40, 4))
    x = np.vstack([a, b]).astype(np.float32)
    # without a reference the first pick may be in either blob; with one in blob a, the pick is in blob b
    for r in (0, 5, 11):
        picks, _ = _select(x, method, 2, reference=[f"i{r:05d}"])
        assert len(picks) == 1 and picks[0] >= 40, (method, r, picks)


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.2])  # herding's three stages: TypiClust, MaxHerding, kernel herding
def test_near_duplicate_clump(fraction):
    x, blob = _blobs()
    n = int(fraction * len(x))
    stages = {0.01: "typiclust", 0.05: "maxherding", 0.2: "kernel-herding"}
    assert herding_stage(n, len(x)) == stages[fraction]
    picks, _ = _select(x, "herding", n)
    got = np.bincount(blob[picks], minlength=4)
    assert (got[:3] >= 1).all()  # every blob covered
    assert got[3] <= 1  # one pick covers the whole clump of near-copies
    if fraction == 0.01:
        paper, _ = _select(x, "presel", n)
        assert (blob[paper] == 3).sum() >= 2  # the paper's rule spends several picks on the clump
    else:
        assert got[:3].min() >= 0.2 * n  # the blobs share the picks


def test_greedy_cover_hand_case():
    # 0-1-2 close together, 3 alone; 1 covers most, then 3 (uncovered) beats 0 and 2
    x = np.array([[0, 0], [1, 0], [2, 0], [20, 0]], dtype=np.float32)
    nbr, d2 = knn(x, 3)
    kern = np.exp(-d2 / 2.0) * (d2 < 5)
    a = kernel_matrix(nbr, kern)
    order = greedy_cover(a, np.ones(4), np.ones(4, bool), np.zeros(4), 4)
    assert order[:2].tolist() == [1, 3]
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    # point 1 is a reference: it is not ordered, and 3 comes first
    cur = np.zeros(4)
    cur[[0, 1, 2]] = np.maximum(cur[[0, 1, 2]], [np.exp(-0.5), 1.0, np.exp(-0.5)])
    order = greedy_cover(a, np.ones(4), np.array([True, False, True, True]), cur, 3)
    assert order[0] == 3 and 1 not in order.tolist()


def test_cli_method_herding_on_a_shared_multitask_pool(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from selection_helpers import make_pool

    from presel.cli import main

    p = make_pool(tmp_path, shared=10)
    out = tmp_path / "sel"
    argv = ["select", "--pool", str(p["pool"]), "--features", str(p["features"]), "--feature-ids", str(p["ids"]),
            "--weights", str(p["weights"]), "--reference", str(p["reference"]), "--budget", "0.25",
            "--method", "herding", "--out", str(out)]
    assert main(argv) == 0
    tot = json.loads((out / "summary.json").read_text())["totals"]
    assert tot["total"] == tot["budget"] == 60 and tot["reference"] == 2
    ids = [json.loads(line)["id"] for line in (out / "selection.jsonl").read_text().splitlines()]
    assert len(set(ids)) == 60


def test_ivf_graph_for_big_tasks(monkeypatch):
    from presel.selection import coverage

    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    exact_i, exact_d = coverage.knn(x, 10)
    monkeypatch.setattr(coverage, "EXACT_MAX", 100)  # force the IVF index
    coverage._LAST.clear()
    nbr, d2 = coverage.knn(x, 10, seed=1)
    assert nbr.shape == (600, 10) and not (nbr == np.arange(600)[:, None]).any()
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(nbr.tolist(), exact_i.tolist())])
    assert recall > 0.8
    coverage._LAST.clear()
    again, _ = coverage.knn(x, 10, seed=1)
    assert (again == nbr).all()
    picks, _ = _select(x, "herding", 60)
    assert len(picks) == 60
