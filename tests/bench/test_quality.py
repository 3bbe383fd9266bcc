import json
import math

import numpy as np
import pytest

from presel.bench import quality
from presel.bench.data import TaskData


def test_t_interval_known_sample():
    mean, lo, hi = quality.t_interval([1, 2, 3, 4, 5])
    # sd = sqrt(2.5), se = sd / sqrt(5), t_{0.975, 4} = 2.7764451
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert mean == 3 and lo == pytest.approx(3 - half, abs=1e-6) and hi == pytest.approx(3 + half, abs=1e-6)
    assert quality.t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    assert quality.t_interval([0.7]) == (0.7, 0.7, 0.7)
    with pytest.raises(ValueError):
        quality.t_interval([])


def test_probe_and_nn1_on_separable_points():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 8) * 5 + 1.0
    y = np.repeat(np.arange(4), 10)
    x = centres[y] + 0.1 * rng.standard_normal((40, 8))
    yt = np.repeat(np.arange(4), 5)
    xt = centres[yt] + 0.1 * rng.standard_normal((20, 8))
    assert quality.probe_accuracy(x, y, xt, yt) == 1.0
    assert quality.nn1_accuracy(x, y, xt, yt) == 1.0
    # labels swapped on the test side: every prediction is wrong
    assert quality.probe_accuracy(x, y, xt, (yt + 1) % 4) == 0.0
    # one class selected: predict it
    assert quality.probe_accuracy(x[y == 2], y[y == 2], xt, yt) == 0.25


def test_nn1_hand_case():
    xtr = np.array([[1, 0], [0, 1]], dtype=np.float32)
    ytr = np.array([7, 3])
    xte = np.array([[0.9, 0.2], [0.1, 1.0], [-1, 0.1]], dtype=np.float32)
    assert quality.nn1_accuracy(xtr, ytr, xte, np.array([7, 3, 3])) == 1.0
    assert quality.nn1_accuracy(xtr, ytr, xte, np.array([7, 7, 7])) == pytest.approx(1 / 3)


def _blobs(name, seed, n_pool=200, n_held=80, k=4, d=16):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 3
    y = rng.integers(k, size=n_pool + n_held)
    x = (centres[y] + rng.standard_normal((len(y), d))).astype(np.float32)
    return TaskData(name, x[:n_pool], y[:n_pool], x[n_pool:], y[n_pool:])


def test_benchmark_runs_on_a_tiny_pool(tmp_path):
    tasks = [_blobs("t1", 0), _blobs("t2", 1)]
    methods = ("presel", "herding", "random", "typiclust", "coreset")
    rows = quality.run(tasks, methods=methods, budgets=(0.05, 0.1), seeds=2, images_per_cluster=20)
    assert len(rows) == 2 * len(methods) * 2 * 2
    for r in rows:
        assert r["selected"] == round(r["budget"] * 180)  # each seed draws 90% of the 200-image pool
        assert all(0 <= r[c] <= 1 for c in quality.CLASSIFIERS)
    # blobs this clean: every method's probe beats chance by far at 10%
    assert min(r["probe"] for r in rows if r["budget"] == 0.1) > 0.6
    summary = quality.summarise(rows)
    assert {s["task"] for s in summary} == {"t1", "t2", "mean"}
    for s in summary:
        assert s["n"] == 2 and s["ci_low"] <= s["mean"] <= s["ci_high"]
        if s["method"] == "random":
            assert s["d_random"] == 0 and s["d_random_low"] == 0
    paths = quality.write(tmp_path / "bench", rows, summary, {"note": "test"})
    data = json.loads(paths["json"].read_text())
    assert len(data["rows"]) == len(rows) and data["meta"] == {"note": "test"}
    assert paths["csv"].read_text().splitlines()[0].startswith("task,method,budget,classifier,n,mean,ci_low,ci_high,"
                                                               "d_random,d_random_low,d_random_high,d_typiclust")
    for key in ("png", "png_nn1", "png_mlp"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["md"].read_text()
    assert "| herding |" in md and "| random | probe |" in md
    text = quality.table(summary)
    assert "herding" in text and "coreset" in text
    board = quality.scoreboard(summary, "presel", "random")
    assert board["cells"] == 4 and board["won"] + board["tied"] + board["lost"] == 4  # 2 tasks x 2 budgets
    # same seeds -> same rows (deterministic), also in worker processes
    again = quality.run(tasks[:1], methods=("presel", "coreset"), budgets=(0.05,), seeds=2, images_per_cluster=20,
                        jobs=2)
    assert again == [r for r in rows if r["task"] == "t1" and r["method"] in ("presel", "coreset")
                     and r["budget"] == 0.05]


def test_paired_difference_and_scoreboard():
    rows = []
    for seed, (a, b) in enumerate([(0.6, 0.5), (0.7, 0.58), (0.65, 0.56)]):
        for m, v in (("rule", a), ("random", b), ("typiclust", a)):
            rows.append({"task": "t", "method": m, "budget": 0.1, "seed": seed, "probe": v, "nn1": v, "mlp": v})
    summary = quality.summarise(rows)
    rule = next(s for s in summary if s["method"] == "rule" and s["classifier"] == "probe")
    diffs = [0.1, 0.12, 0.09]
    mean, lo, hi = quality.t_interval(diffs)
    assert rule["d_random"] == pytest.approx(mean) and rule["d_random_low"] == pytest.approx(lo)
    assert lo > 0
    assert rule["d_typiclust"] == 0
    board = quality.scoreboard(summary, "rule", "random")
    assert (board["won"], board["tied"], board["lost"]) == (1, 0, 0)
    board = quality.scoreboard(summary, "rule", "typiclust")
    assert (board["won"], board["tied"], board["lost"], board["below_ci"]) == (0, 1, 0, 0)
    board = quality.scoreboard(summary, "random", "typiclust")
    assert (board["won"], board["lost"], board["below_ci"]) == (0, 1, 0)  # 54.7 is inside 65 +- 12.4


def test_derived_tasks():
    from presel.bench import data

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 100)
    base = TaskData("b", rng.standard_normal((1000, 8)).astype(np.float32), y,
                    rng.standard_normal((200, 8)).astype(np.float32), np.repeat(np.arange(10), 20))
    lt = data._longtail(base, 0)
    counts = np.sort(np.bincount(lt.y_pool, minlength=10))
    assert counts[-1] == 100 and counts[0] == 2 and len(lt.y_held) == 200
    dup = data._planted_dups(base, 0)
    assert len(dup.y_pool) == 1300
    extra = dup.x_pool[1000:]
    nearest = (extra[:, None, :] - base.x_pool[None]).__pow__(2).sum(-1).min(1)
    assert nearest.max() < 0.01 * (base.x_pool ** 2).sum(1).mean()  # near-copies of pool images
    weak = data._weak_labels(base, 0)
    kept = (weak.y_pool == base.y_pool).mean()
    assert 0.2 < kept < 0.45  # 25% kept + 75% x 1/10 by chance
    sub = data._subsample(base, 300, 0)
    assert len(sub.y_pool) == 300 and sub.x_held is base.x_held
    assert set(data.DERIVED) <= set(data.task_names())


def test_bench_command_rejects_an_unknown_method(tmp_path, capsys):
    from presel.cli import main

    assert main(["bench", "quality", "--out", str(tmp_path / "b"), "--methods", "nope"]) == 2
    assert "unknown nope" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
