import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from selection_helpers import make_pool

from presel.errors import PreselError
from presel.io.features import load_features
from presel.io.manifest import read_pool
from presel.selection import METHODS, SelectConfig, select, select_to_dir
from presel.selection.methods import WITHIN_CLUSTER_METHODS
from presel.selection.weights_io import read_weights_file


@pytest.fixture
def tiny(tmp_path):
    return make_pool(tmp_path)


def _run(p, reference=None, weights="file", **cfg):
    pool = read_pool(p["pool"])
    fm = load_features(p["features"], p["ids"])
    if "budget_count" not in cfg:
        cfg.setdefault("budget", 0.3)
    w = read_weights_file(p["weights"]) if weights == "file" else weights
    ref = open(p["reference"]).read().split() if reference is None else reference
    return select(pool, fm, weights=w, reference=ref, config=SelectConfig(**cfg)), pool


def test_exact_budget_reference_counts_and_top_centrality(tiny):
    res, pool = _run(tiny, budget=0.3)
    tot = res.summary["totals"]
    assert tot["distinct_images"] == 240 and tot["budget"] == 72 and tot["reference"] == 2
    assert tot["selected"] == 70 and len(res.selection["id"]) == 72
    assert sorted(s for s in res.selection["source"]) == ["reference"] * 2 + ["selected"] * 70
    # quotas follow weights 1 : 1/2 : 1/3 of 70 (normalised 6/11, 3/11, 2/11 -> 38.18, 19.09, 12.73)
    q = {t: v["quota"] for t, v in res.summary["tasks"].items()}
    assert q == {"a": 38, "b": 19, "c": 13}
    assert {t: v["selected"] for t, v in res.summary["tasks"].items()} == q
    # inside each cluster the selected items are the most central available ones (ties by id)
    a = res.assignments
    for t in "abc":
        for c in set(cl for tt, cl in zip(a["task"], a["cluster"]) if tt == t):
            rows = [i for i in range(len(a["id"])) if a["task"][i] == t and a["cluster"][i] == c and not a["reference"][i]]
            ranked = sorted(rows, key=lambda i: (-a["nc_score"][i], a["id"][i]))
            n_sel = sum(a["selected"][i] for i in rows)
            assert {a["id"][i] for i in ranked[:n_sel]} == {a["id"][i] for i in rows if a["selected"][i]}
            assert [a["rank"][i] for i in ranked] == list(range(1, len(ranked) + 1))
    # reference rows: no score, no rank
    for i, s in enumerate(res.selection["source"]):
        if s == "reference":
            assert res.selection["nc_score"][i] is None and res.selection["rank"][i] is None


def test_fraction_floor_is_exact(tmp_path):
    p = make_pool(tmp_path, {"a": 60, "b": 40}, ref=())
    res, _ = _run(p, reference=[], budget=0.29)  # 0.29 * 100 = 28.999... in floats
    assert res.summary["totals"]["budget"] == 29 and res.summary["totals"]["selected"] == 29


def test_cross_task_image_never_selected_twice_and_shortfall_reallocated(tmp_path):
    # task b uses all 100 images of task a (plus 0 own); c has 20 own. All 120 distinct images are selected.
    p = make_pool(tmp_path, {"a": 100, "b": 0, "c": 20}, shared=100, ref=())
    w = {"a": 0.45, "b": 0.45, "c": 0.1}
    res, _ = _run(p, reference=[], weights=w, budget_count=120)
    images = [im for im in res.selection["image"]]
    assert len(images) == 120 and len(set(images)) == 120
    sel = {t: v["selected"] for t, v in res.summary["tasks"].items()}
    assert sum(sel.values()) == 120 and sel["c"] == 20
    assert res.summary["totals"]["allocation_rounds"] >= 2
    # b's items found their features through a's records of the same image
    assert res.summary["tasks"]["b"]["images"] == 100
    # with allow_repeats a shared image may be chosen by both tasks
    rep, _ = _run(p, reference=[], weights=w, budget_count=120, allow_repeats=True)
    assert len(rep.selection["image"]) == 120 and len(set(rep.selection["image"])) < 120


def test_reference_image_excluded_in_every_task(tmp_path):
    p = make_pool(tmp_path, {"a": 50, "b": 30}, shared=20, ref=("a1",))
    res, _ = _run(p, reference=["a1", "img/a/2.jpg"], budget=0.5, task_weights="uniform")
    a = res.assignments
    ref_imgs = {"img/a/1.jpg", "img/a/2.jpg"}
    assert {a["task"][i] for i in range(len(a["id"])) if a["image"][i] in ref_imgs} == {"a", "b"}
    for i in range(len(a["id"])):
        if a["image"][i] in ref_imgs:
            assert a["reference"][i] and not a["selected"][i] and a["nc_score"][i] is None
    assert res.summary["totals"]["reference"] == 2
    assert res.selection["source"].count("reference") == 2
    assert len(set(res.selection["image"])) == len(res.selection["image"]) == res.summary["totals"]["budget"]


def test_features_by_image_key(tmp_path):
    p = make_pool(tmp_path, ids_as="image")
    res, _ = _run(p, budget=0.2)
    assert res.summary["totals"]["total"] == res.summary["totals"]["budget"]


@pytest.mark.parametrize("method", METHODS)
def test_methods_exact_and_deterministic(tmp_path, method):
    p = make_pool(tmp_path, {"a": 90, "b": 60}, shared=10, ref=("a1", "b2"))
    r1, _ = _run(p, budget=0.3, method=method, task_weights="size", seed=4)
    r2, _ = _run(p, budget=0.3, method=method, task_weights="size", seed=4)
    tot = r1.summary["totals"]
    assert tot["total"] == tot["budget"] == int(0.3 * 150)
    assert len(set(r1.selection["image"])) == tot["budget"]
    assert r1.selection == r2.selection and r1.assignments == r2.assignments
    if method != "presel":
        assert all(v is None for v in r1.selection["nc_score"])
    r3, _ = _run(p, budget=0.3, method=method, task_weights="size", seed=5)
    if method not in ("presel", "herding", *WITHIN_CLUSTER_METHODS):  # deterministic given the clusters / the graph
        assert r3.selection["id"] != r1.selection["id"]


@pytest.mark.parametrize("method", WITHIN_CLUSTER_METHODS)
def test_within_cluster_methods_keep_presel_clusters_and_quotas(tmp_path, method):
    p = make_pool(tmp_path, {"a": 90, "b": 60}, shared=10, ref=("a1", "b2"))
    base, _ = _run(p, budget=0.3, seed=3)
    res, _ = _run(p, budget=0.3, seed=3, method=method)
    a, b = res.assignments, base.assignments
    assert a["cluster"] == b["cluster"] and a["reference"] == b["reference"]
    for summ in ("tasks",):
        assert {t: v["quota"] for t, v in res.summary[summ].items()} == {t: v["quota"] for t, v in base.summary[summ].items()}

    def per_cluster(r):
        out = {}
        for t, c, s in zip(r.assignments["task"], r.assignments["cluster"], r.assignments["selected"]):
            out[(t, c)] = out.get((t, c), 0) + int(s)
        return out

    assert per_cluster(res) == per_cluster(base)
    # ranks are a permutation 1..m of each cluster's available items; score is the neighbour centrality
    for t, c in per_cluster(res):
        rows = [i for i in range(len(a["id"])) if a["task"][i] == t and a["cluster"][i] == c and not a["reference"][i]]
        assert sorted(a["rank"][i] for i in rows) == list(range(1, len(rows) + 1))
        assert [a["score"][i] for i in rows] == pytest.approx([b["score"][i] for i in rows])


def test_typiclust_one_per_cluster(tmp_path):
    p = make_pool(tmp_path, {"a": 100}, ref=())
    res, _ = _run(p, reference=[], budget_count=10, method="typiclust", task_weights="uniform")
    assert res.summary["tasks"]["a"]["clusters"] == 10
    assert sorted(res.selection["cluster"]) == list(range(10))


def test_byte_identical_outputs(tiny, tmp_path):
    pool = read_pool(tiny["pool"])
    outs = []
    for name in ("o1", "o2"):
        fm = load_features(tiny["features"], tiny["ids"])
        select_to_dir(pool, fm, tiny["weights"], tiny["reference"], SelectConfig(budget=0.25), tmp_path / name)
        outs.append(tmp_path / name)
    files = sorted(f.name for f in outs[0].iterdir())
    assert files == ["assignments.parquet", "config.json", "selection.jsonl", "selection.parquet", "summary.json"]
    for f in files:
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f
    t = pq.read_table(outs[0] / "selection.parquet")
    assert t.column_names == ["id", "image", "task", "cluster", "nc_score", "score", "rank", "source"]
    assert t.num_rows == json.loads((outs[0] / "summary.json").read_text())["totals"]["budget"]
    lines = (outs[0] / "selection.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == t.column("id").to_pylist()
    a = pq.read_table(outs[0] / "assignments.parquet")
    assert a.num_rows == 240 and a.column("selected").to_pylist().count(True) == t.num_rows - 2
    cfg = json.loads((outs[0] / "config.json").read_text())
    assert cfg["stage"] == "select" and cfg["config"]["budget"] == 0.25


def test_config_validation():
    with pytest.raises(PreselError, match="exactly one"):
        SelectConfig()
    with pytest.raises(PreselError, match="budget=1.5"):
        SelectConfig(budget=1.5)
    with pytest.raises(PreselError, match="images_per_cluster=0"):
        SelectConfig(budget=0.1, images_per_cluster=0)
    with pytest.raises(PreselError, match="method='x'"):
        SelectConfig(budget=0.1, method="x")


def test_irs_without_weights_and_zero_vector(tiny, tmp_path):
    with pytest.raises(PreselError, match="--weights"):
        _run(tiny, weights=None)
    feats = np.load(tiny["features"])
    feats[5] = 0
    np.save(tiny["features"], feats)
    with pytest.raises(PreselError, match="'a5'.*zero vector"):
        _run(tiny)
