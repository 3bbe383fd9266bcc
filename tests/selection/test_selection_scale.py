"""Selection at scale: hierarchical k-means, the columnar pool reader, memory-mapped features, parallel tasks."""

import json

import numpy as np
import pytest

from presel.errors import PreselError
from presel.io.columnar import image_keys, read_pool_columns
from presel.io.features import FeatureMatrix, load_features
from presel.io.manifest import read_pool
from presel.records import image_key
from presel.selection import SelectConfig, select
from presel.selection import kmeans as km


def _mixture(n=20_000, d=32, k=60, seed=0):
    """A seeded mixture: ``k`` Gaussian blobs of lognormal sizes and spreads, 2% uniform outliers, L2-normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32)
    p = rng.lognormal(0, 1, k)
    lab = rng.choice(k, size=n, p=p / p.sum())
    x = centres[lab] + rng.standard_normal((n, d)).astype(np.float32) * rng.uniform(0.3, 1.0, k)[lab, None]
    out = rng.random(n) < 0.02
    x[out] = rng.standard_normal((int(out.sum()), d)).astype(np.float32) * 2
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def mixture():
    return _mixture()


def test_hierarchical_deterministic_exactly_c_and_close_to_flat(mixture):
    c = 200
    a = km.hierarchical_kmeans(mixture, c, seed=5)
    b = km.hierarchical_kmeans(mixture, c, seed=5)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.centroids, b.centroids)
    assert a.objective == b.objective
    assert a.n_clusters == c and np.bincount(a.labels, minlength=c).min() >= 1 and a.labels.max() == c - 1
    flat = km.kmeans(mixture, c, seed=5)
    assert a.objective <= 1.02 * flat.objective, (a.objective, flat.objective)
    # the objective is what it says: squared distances to the assigned centroids
    d = ((mixture - a.centroids[a.labels]) ** 2).sum(dtype=np.float64)
    np.testing.assert_allclose(a.objective, d, rtol=1e-4)
    other = km.hierarchical_kmeans(mixture, c, seed=6)
    assert not np.array_equal(other.labels, a.labels)  # the seed is used


@pytest.mark.parametrize("n, c", [(40, 39), (300, 120), (1000, 37)])
def test_hierarchical_always_returns_c_clusters(n, c):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    x[: n // 2] = x[0]  # many identical points: groups can hold fewer distinct points than clusters asked
    r = km.hierarchical_kmeans(x, c, seed=0)
    assert r.n_clusters == c and len(np.unique(r.labels)) == c


def test_group_cluster_counts_split_exactly():
    counts = km.group_cluster_counts(np.array([500, 30, 1, 200]), np.array([10.0, 40.0, 0.0, 5.0]), 60)
    assert counts.sum() == 60 and (counts >= 1).all() and counts[2] == 1 and (counts <= [500, 30, 1, 200]).all()
    assert counts[1] > counts[0] > counts[3]  # in proportion to spread


def test_use_hierarchical_modes():
    assert not km.use_hierarchical("flat", 10**7)
    assert km.use_hierarchical("hierarchical", 10)
    assert km.use_hierarchical("auto", km.AUTO_HIERARCHICAL_MIN)
    assert not km.use_hierarchical("auto", km.AUTO_HIERARCHICAL_MIN - 1)
    with pytest.raises(PreselError, match="kmeans='x'"):
        km.use_hierarchical("x", 5)
    with pytest.raises(PreselError, match="kmeans='tree'"):
        SelectConfig(budget=0.1, kmeans="tree")


def _pool(tmp_path, n_tasks=(("a", 900), ("b", 500), ("c", 300)), d=16, seed=0):
    rng = np.random.default_rng(seed)
    recs, feats = [], []
    for t, n in n_tasks:
        cen = rng.standard_normal((8, d)) * 2
        for i in range(n):
            recs.append({"id": f"{t}{i}", "image": f"img/{t}/{i}.jpg", "task": t})
            feats.append(cen[i % 8] + rng.standard_normal(d))
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    np.save(tmp_path / "feats.npy", np.asarray(feats, dtype=np.float16))
    (tmp_path / "ids.txt").write_text("".join(r["id"] + "\n" for r in recs))
    return read_pool(tmp_path / "pool.jsonl"), load_features(tmp_path / "feats.npy", tmp_path / "ids.txt")


def _same(a, b):
    return a.selection == b.selection and a.assignments == b.assignments


def test_auto_never_changes_official(tmp_path, monkeypatch):
    pool, fm = _pool(tmp_path)
    monkeypatch.setattr(km, "AUTO_HIERARCHICAL_MIN", 10)  # auto would go two-level on every task
    res = {m: select(pool, fm, weights=None, reference=["a1", "b2"],
                     config=SelectConfig(budget=0.2, task_weights="size", protocol="official", kmeans=m))
           for m in ("flat", "auto", "hierarchical")}
    assert _same(res["flat"], res["auto"]) and _same(res["flat"], res["hierarchical"])
    paper = {m: select(pool, fm, reference=["a1"], config=SelectConfig(budget=0.2, task_weights="size", kmeans=m))
             for m in ("flat", "auto")}
    assert not _same(paper["flat"], paper["auto"])  # under paper, auto does run two levels here
    assert paper["auto"].summary["totals"]["total"] == paper["auto"].summary["totals"]["budget"]
    assert all(t["clusters"] == round(t["images"] / 100) for t in paper["auto"].summary["tasks"].values())


def test_memory_mapped_selection_is_byte_identical(tmp_path):
    pool, fm = _pool(tmp_path)
    assert isinstance(fm._parts[0], np.memmap)
    in_memory = FeatureMatrix([(fm.ids, np.array(fm._parts[0]))], source=fm.source)
    cfg = SelectConfig(budget=0.25, task_weights="size", kmeans="hierarchical")
    a = select(pool, fm, reference=["a1"], config=cfg)
    b = select(pool, in_memory, reference=["a1"], config=cfg)
    assert _same(a, b) and a.summary == b.summary


def test_parallel_tasks_identical_to_serial(tmp_path):
    pool, fm = _pool(tmp_path, n_tasks=tuple((f"t{i}", 150 + 40 * i) for i in range(6)))
    res = [select(pool, fm, reference=["t01"], config=SelectConfig(budget=0.3, task_weights="size", threads=w))
           for w in (1, 3)]
    assert _same(res[0], res[1]) and res[0].summary == res[1].summary


# ------------------------------------------------------------------ columnar reader

def _records(pool):
    return [(r.id, r.image, r.task, r.line) for r in pool.records]


def test_image_keys_match_image_key():
    paths = ["a/b.jpg", "./a/b.jpg", "a//b.jpg", "a/./b.jpg", "a/../b.jpg", "a\\b.jpg", "/abs/x.png", "a/b/",
             "..x/y.jpg", "a/.hidden.jpg", "x.", "a/..b/c.jpg", "../up.jpg"]
    assert image_keys(paths) == [image_key(p) for p in paths]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_columnar_reader_equals_read_pool(tmp_path, fmt):
    recs = [{"id": "r0", "image": "coco/1.jpg", "task": "vqa", "conversations": [{"from": "human", "value": "hi"}]},
            {"id": "r1", "image": "./coco//2.jpg", "task_name": "cap"},
            {"id": "r2", "task": "text"},  # text-only
            {"id": "r3", "images": ["gqa/3.jpg"], "task": "gqa"},
            {"id": "r4", "image": "gqa/4.jpg", "task": ""},  # no task: rule or default
            {"id": "r5", "image": "coco/1.jpg", "task": "cap"}]
    path = tmp_path / f"pool.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    elif fmt == "json":
        path.write_text(json.dumps(recs))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {k: [r.get(k) for r in recs] for k in ("id", "image", "task", "task_name")}
        cols["images"] = [r.get("images") for r in recs]
        pq.write_table(pa.table(cols), path)
    for kw in ({"default_task": "other"}, {"task_rules": ["gqa/=G"], "default_task": "x"},
               {"task_map": {"r0": "mapped"}, "default_task": "d"}):
        a = read_pool(path, **kw)
        b = read_pool_columns(path, **kw)
        assert _records(a) == _records(b) and b.keys == [r.image_key for r in a.records]
        assert (a.text_only, a.format, a.image_root) == (b.text_only, b.format, b.image_root)
        assert all(r.conversations is None for r in b.records)


@pytest.mark.parametrize("body, match", [
    ('{"id": "a", "image": "x.jpg", "task": "t"}\n{"id": "a", "image": "y.jpg", "task": "t"}\n', "duplicate id 'a'"),
    ('{"id": "a", "image": "x.jpg", "task": "t"}\n{"id": 3, "image": ["y.jpg", "z.jpg"], "task": "t"}\n',
     "line 2: record has 2 images"),
    ('{"id": "a", "image": "x.jpg", "task": "t"}\nnot json\n', "line 2: not valid JSON"),
    ('{"id": "a", "image": "x.jpg"}\n', "line 1: no task for id 'a'"),
    ('{"image": "x.jpg", "task": "t"}\n', "line 1: missing 'id'"),
])
def test_columnar_reader_reports_read_pools_errors(tmp_path, body, match):
    p = tmp_path / "pool.jsonl"
    p.write_text(body)
    with pytest.raises(PreselError, match=match):
        read_pool_columns(p)


def test_columnar_reader_keeps_line_numbers_with_blank_lines(tmp_path):
    p = tmp_path / "pool.jsonl"
    p.write_text('{"id": "a", "image": "x.jpg", "task": "t"}\n\n{"id": "b", "image": "y.jpg", "task": "t"}\n')
    assert [r.line for r in read_pool_columns(p).records] == [1, 3]


def test_faiss_gpu_without_a_gpu_is_a_clear_error():
    if km.faiss_gpus() > 0:
        pytest.skip("a GPU faiss is present: tests/gpu covers it")
    assert km.resolve_backend("faiss") == "faiss-cpu"
    with pytest.raises(PreselError, match="kmeans_backend=faiss-gpu: .*faiss-gpu-cu12"):
        km.kmeans(np.eye(4, dtype=np.float32), 2, backend="faiss-gpu")


def test_columnar_reader_invalid_utf8_names_the_line(tmp_path):
    p = tmp_path / "pool.jsonl"
    p.write_bytes(b'{"id": "a", "image": "x.jpg", "task": "t"}\n{"id": "\xff", "image": "y.jpg", "task": "t"}\n')
    with pytest.raises(PreselError, match="line 2: not UTF-8"):
        read_pool_columns(p)
