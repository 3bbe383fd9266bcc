"""The map's points from a selection with near-duplicate groups (no models: select_to_dir on generated features)."""

import json

import numpy as np
import pyarrow.parquet as pq

from presel.io.features import load_features
from presel.io.manifest import read_pool
from presel.map import MapConfig, build_map
from presel.map.points import DROPPED, REFERENCE, SELECTED, collect_points
from presel.report.data import RunOutputs
from presel.selection.neardup import DedupConfig, dedup_to_dir
from presel.selection.select import SelectConfig, select_to_dir


def _run(tmp_path, include=None):
    rng = np.random.default_rng(0)
    rows, x = [], []
    for t, n in (("a", 60), ("b", 40)):
        c = rng.normal(size=(4, 16)) * 3
        for i in range(n):
            rows.append({"id": f"{t}{i}", "image": f"{t}/{i}.png", "task": t})
            x.append(c[i % 4] + rng.normal(size=16))
    x = np.asarray(x, dtype=np.float32)
    x[1] = x[0] + 1e-3  # a1 and a2 near-copies of a0
    x[2] = x[0] - 1e-3
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    np.save(tmp_path / "f.npy", x)
    (tmp_path / "f.ids").write_text("".join(r["image"] + "\n" for r in rows))  # keyed by image, as a store
    (tmp_path / "ref.txt").write_text("a5\nb5\n")
    fm = load_features(tmp_path / "f.npy", tmp_path / "f.ids")
    pool = read_pool(tmp_path / "pool.jsonl")
    run = tmp_path / "run"
    dedup_to_dir(fm, run / "dedup", DedupConfig(threshold=0.999), pool=pool)
    select_to_dir(pool, fm, None, tmp_path / "ref.txt", SelectConfig(budget=0.3, task_weights="size",
                                                                     images_per_cluster=10, include=include),
                  run / "selection", dedup=run / "dedup")
    return run, fm


def test_points_of_a_deduplicated_selection(tmp_path):
    run, fm = _run(tmp_path)
    pts = collect_points(RunOutputs(run), fm)
    summary = json.loads((run / "selection" / "summary.json").read_text())
    assert len(pts) == 100  # 98 images the selection saw + 2 near-copies it dropped
    assert pts.status.count(DROPPED) == summary["totals"]["near_duplicate_images_dropped"] == 2
    assert pts.status.count(SELECTED) == summary["totals"]["selected"]
    assert pts.status.count(REFERENCE) == 2
    groups = pq.read_table(run / "dedup" / "groups.parquet").to_pylist()
    kept = next(g["key"] for g in groups if g["keep"])
    for i, s in enumerate(pts.status):
        if s == DROPPED:
            assert pts.group[i] == 0 and pts.kept[i] == kept and pts.cluster[i] == -1
    # the picks per cluster are what the page shows as the cluster's share
    asg = pq.read_table(run / "selection" / "assignments.parquet").to_pylist()
    t = pts.tasks.index("a")
    assert pts.quota[(t, 0)] == sum(r["selected"] for r in asg if r["task"] == "a" and r["cluster"] == 0)


def test_pca_map_without_thumbnails(tmp_path):
    run, _ = _run(tmp_path)
    index = build_map(run, MapConfig(method="pca", thumb_size=0), features=tmp_path / "f.npy",
                      feature_ids=tmp_path / "f.ids", progress=False)
    data = (index.parent / "assets" / "data.js").read_text()
    assert '"n":100' in data and '"thumbs":null' in data
    assert "2 of" not in index.read_text()  # no thumbnail note when thumbnails are off


def test_points_forced_in_by_an_include_list(tmp_path):
    (tmp_path / "inc.txt").write_text("a59\nb/39.png\n")
    run, fm = _run(tmp_path, include=str(tmp_path / "inc.txt"))
    pts = collect_points(RunOutputs(run), fm)
    assert sorted(i for i, f in zip(pts.id, pts.forced) if f) == ["a59", "b39"]
    assert all(pts.status[i] == SELECTED for i, f in enumerate(pts.forced) if f)
    (tmp_path / "inc.txt").unlink()  # the list is gone: the points are still drawn, as plain picks
    assert not any(collect_points(RunOutputs(run), fm).forced)
