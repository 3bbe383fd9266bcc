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


def test_benchmark_runs_on_a_tiny_pool(tmp_path, capsys):
    tasks = [_blobs("t1", 0), _blobs("t2", 1)]
    rows = quality.run(tasks, methods=quality.METHODS, budgets=(0.05, 0.1), seeds=2, images_per_cluster=20)
    assert len(rows) == 2 * len(quality.METHODS) * 2 * 2
    for r in rows:
        assert r["selected"] == round(r["budget"] * 200)
        assert 0 <= r["probe"] <= 1 and 0 <= r["nn1"] <= 1
    # blobs this clean: every method's probe beats chance by far at 10%
    assert min(r["probe"] for r in rows if r["budget"] == 0.1) > 0.6
    summary = quality.summarise(rows)
    assert {s["task"] for s in summary} == {"t1", "t2", "mean"}
    for s in summary:
        assert s["n"] == 2 and s["ci_low"] <= s["mean"] <= s["ci_high"]
    paths = quality.write(tmp_path / "bench", rows, summary, {"note": "test"})
    data = json.loads(paths["json"].read_text())
    assert len(data["rows"]) == len(rows) and data["meta"] == {"note": "test"}
    assert paths["csv"].read_text().splitlines()[0] == "task,method,budget,classifier,n,mean,ci_low,ci_high"
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = quality.table(summary)
    assert "presel-cover" in text and "coreset" in text
    w = quality.wins(summary, "presel", "random")
    assert w["cells"] == 4  # 2 tasks x budgets 5%, 10%
    # same seeds -> same rows (deterministic)
    assert quality.run(tasks[:1], methods=("presel", "coreset"), budgets=(0.05,), seeds=2, images_per_cluster=20) == \
        [r for r in rows if r["task"] == "t1" and r["method"] in ("presel", "coreset") and r["budget"] == 0.05]
