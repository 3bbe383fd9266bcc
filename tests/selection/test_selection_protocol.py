"""``protocol``: official (the authors' code, counted in records) and paper (distinct images) on a pool shaped
like LLaVA-665K: tasks share images, one task has several records per image."""

import json

import numpy as np
import pytest

from presel.errors import PreselError
from presel.importance.reference import ReferenceConfig, sample_reference
from presel.io.features import load_features
from presel.io.manifest import read_pool
from presel.selection import SelectConfig, select
from presel.selection.kmeans import n_clusters_for
from presel.selection.official import n_clusters_official

WEIGHTS = {"conv": 0.41, "vqa": 0.27, "aok": 0.2, "gqa": 0.12}


def make_665k_like(root, d=12, seed=0):
    """conv: 330 COCO images, one record each; vqa: 230 records on 200 of those images plus 30 own;
    aok: 3 records (one per answer order) on each of 70 images, 40 of them COCO images of conv; gqa: 240 own.
    Features are per image (ids = image paths), clustered around a few centres."""
    rng = np.random.default_rng(seed)
    recs = []
    coco = [f"coco/{i:06d}.jpg" for i in range(330)]
    for i, img in enumerate(coco):
        recs.append({"id": f"conv-{i}", "image": img, "task": "conv"})
    for i, img in enumerate(coco[:200] + [f"coco/v{i}.jpg" for i in range(30)]):
        recs.append({"id": f"vqa-{i}", "image": img, "task": "vqa"})
    for i, img in enumerate(coco[100:140] + [f"aok/{i}.jpg" for i in range(30)]):
        for j in range(3):
            recs.append({"id": f"aok-{i}-{j}", "image": img, "task": "aok"})
    for i in range(240):
        recs.append({"id": f"gqa-{i}", "image": f"gqa/{i}.jpg", "task": "gqa"})
    rng.shuffle(recs)  # tasks interleaved, as in the mix
    (root / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    images = sorted({r["image"] for r in recs})
    centres = rng.standard_normal((6, d)) * 3
    feats = np.array([centres[k % 6] + rng.standard_normal(d) for k in range(len(images))], dtype=np.float32)
    np.save(root / "feats.npy", feats)
    (root / "ids.txt").write_text("\n".join(images) + "\n")
    return read_pool(root / "pool.jsonl"), load_features(root / "feats.npy", root / "ids.txt")


@pytest.fixture
def pool665(tmp_path):
    return make_665k_like(tmp_path)


def _authors_cluster_quota(labels, avail, n):
    """The authors' cluster quota, written out again: proportional rounding, cap, one +1/-1 pass."""
    clusters = sorted(set(labels))
    size = {c: sum(1 for x in labels if x == c) for c in clusters}
    free = {c: sum(1 for x, a in zip(labels, avail) if x == c and a) for c in clusters}
    total = sum(free.values())
    q = {c: min(int(round(free[c] / total * n)), free[c]) for c in clusters}
    diff = n - sum(q.values())
    if diff > 0:
        for c in sorted(clusters, key=lambda c: -size[c]):
            if diff and q[c] < free[c]:
                q[c] += 1
                diff -= 1
    elif diff < 0:
        for c in sorted(clusters, key=lambda c: size[c]):
            if diff and q[c] > 0:
                q[c] -= 1
                diff += 1
    return q


def test_official_counts_follow_the_authors_rule(pool665):
    pool, fm = pool665
    records = {}
    for r in pool.records:
        records[r.task] = records.get(r.task, 0) + 1
    ref = sample_reference(pool, ReferenceConfig(fraction=0.05, seed=0, protocol="official"))
    got_ref = {}
    for r in ref:
        got_ref[r.task] = got_ref.get(r.task, 0) + 1
    assert got_ref == {t: max(1, int(n * 5 / 100)) for t, n in records.items()}  # 5% of each task's records

    res = select(pool, fm, weights=WEIGHTS, reference=[r.id for r in ref],
                 config=SelectConfig(budget=0.15, protocol="official"))
    s = res.summary
    R = len(pool.records)
    n_new = 2 * int(R * 5 / 100)  # round 3 of the authors' loop: two rounds of 5% of the records
    w = np.array([WEIGHTS[t] for t in s["tasks"]]) / sum(WEIGHTS.values())
    quota = [int(x * n_new) for x in w]
    quota[int(np.argmax(w))] += n_new - sum(quota)
    assert [t["quota"] for t in s["tasks"].values()] == quota
    assert s["totals"]["new_budget"] == n_new and s["totals"]["reference"] == len(ref)
    assert {t: v["reference"] for t, v in s["tasks"].items()} == got_ref
    assert {t: v["clusters"] for t, v in s["tasks"].items()} == {t: max(1, int(0.01 * n)) for t, n in records.items()}

    # per task and cluster, the picks equal the authors' cluster quota, computed here from the assignments
    a = res.assignments
    for ti, task in enumerate(s["tasks"]):
        rows = [i for i, t in enumerate(a["task"]) if t == task]
        labels = [a["cluster"][i] for i in rows]
        avail = [not a["reference"][i] for i in rows]
        want = _authors_cluster_quota(labels, avail, quota[ti])
        assert not s["tasks"][task].get("random_fill")
        got = {c: sum(1 for i in rows if a["cluster"][i] == c and a["selected"][i]) for c in want}
        assert got == want, task
    sel = [i for i, src in zip(res.selection["id"], res.selection["source"]) if src == "selected"]
    assert len(sel) == n_new and len(set(sel)) == n_new  # records, each once
    assert not set(sel) & {r.id for r in ref}
    # records, not images: the aok task picks several records of one image, and an image may be picked in two tasks
    img = {r.id: r.image_key for r in pool.records}
    aok = [img[i] for i in sel if i.startswith("aok-")]
    assert len(set(aok)) < len(aok)


def test_official_inside_a_cluster_takes_the_most_central(pool665):
    pool, fm = pool665
    ref = [r.id for r in sample_reference(pool, ReferenceConfig(protocol="official"))]
    res = select(pool, fm, weights=WEIGHTS, reference=ref, config=SelectConfig(budget=0.15, protocol="official"))
    a = res.assignments
    for task in res.summary["tasks"]:
        for c in set(x for x, t in zip(a["cluster"], a["task"]) if t == task):
            rows = [i for i, (t, x) in enumerate(zip(a["task"], a["cluster"])) if t == task and x == c
                    and not a["reference"][i]]
            picked = [a["score"][i] for i in rows if a["selected"][i]]
            left = [a["score"][i] for i in rows if not a["selected"][i]]
            if picked and left and None not in picked + left:
                assert min(picked) >= max(left) - 1e-6


def test_paper_reference_is_5pct_of_distinct_images_and_new_is_the_rest(pool665):
    pool, fm = pool665
    n_images = len({r.image_key for r in pool.records})
    ref = sample_reference(pool, ReferenceConfig(fraction=0.05, seed=0))
    assert len({r.image_key for r in ref}) == len(ref)  # distinct images
    n_tasks = len(pool.tasks)
    assert abs(len(ref) - 0.05 * n_images) <= n_tasks
    # stratified: each task's share within one image of its proportional share
    sizes = {t: len({r.image_key for r in pool.records if r.task == t}) for t in pool.tasks}
    for t, k in sizes.items():
        share = 0.05 * n_images * k / sum(sizes.values())
        assert abs(sum(1 for r in ref if r.task == t) - share) <= 1, t
    res = select(pool, fm, weights=WEIGHTS, reference=[r.id for r in ref], config=SelectConfig(budget=0.15))
    tot = res.summary["totals"]
    assert tot["budget"] == int(0.15 * n_images)
    assert tot["selected"] == tot["budget"] - len(ref)  # 15% = reference + new, exactly
    chosen = [pool.records[pool.by_id()[i]].image_key for i in res.selection["id"]]
    assert len(set(chosen)) == len(chosen) == tot["budget"]


def test_paper_reference_old_rule_would_overshoot(pool665):
    """Summing 5% of each task's distinct images counts a shared image once per task: more than 5% of the pool."""
    pool, _ = pool665
    n_images = len({r.image_key for r in pool.records})
    per_task = sum(int(0.05 * len({r.image_key for r in pool.records if r.task == t})) for t in pool.tasks)
    assert per_task > int(0.05 * n_images) + 1
    assert len(sample_reference(pool, ReferenceConfig())) == int(0.05 * n_images)


@pytest.mark.parametrize("n, paper, official", [(149, 1, 1), (150, 2, 1), (199, 2, 1), (999, 10, 9), (1000, 10, 10)])
def test_cluster_count_rule_per_protocol(n, paper, official):
    assert n_clusters_for(n, 100) == paper  # paper: round(distinct images / 100), at least 1
    assert n_clusters_official(n) == official  # official: max(1, int(0.01 * records))


def test_official_cluster_count_is_over_records(pool665):
    pool, fm = pool665
    ref = [r.id for r in sample_reference(pool, ReferenceConfig(protocol="official"))]
    res = select(pool, fm, weights=WEIGHTS, reference=ref, config=SelectConfig(budget=0.15, protocol="official"))
    t = res.summary["tasks"]["aok"]
    assert t["records"] == 210 and t["images"] == 70 and t["clusters"] == 2  # int(0.01 * 210), not 70 / 100


def test_protocol_validated():
    with pytest.raises(PreselError, match="protocol='x' must be one of paper, official"):
        SelectConfig(budget=0.1, protocol="x")
    with pytest.raises(PreselError, match="protocol"):
        ReferenceConfig(protocol="authors")


def test_official_rejects_baselines(pool665):
    pool, fm = pool665
    with pytest.raises(PreselError, match="method='random'"):
        select(pool, fm, weights=WEIGHTS, reference=[], config=SelectConfig(budget=0.15, protocol="official",
                                                                              method="random"))


def test_select_cli_protocol_official(tmp_path, capsys):
    from presel.cli import main

    make_665k_like(tmp_path)
    (tmp_path / "w.json").write_text(json.dumps(WEIGHTS))
    assert main(["reference", "--pool", str(tmp_path / "pool.jsonl"), "--protocol", "official",
                 "--out", str(tmp_path / "ref")]) == 0
    assert main(["select", "--pool", str(tmp_path / "pool.jsonl"), "--features", str(tmp_path / "feats.npy"),
                 "--feature-ids", str(tmp_path / "ids.txt"), "--weights", str(tmp_path / "w.json"),
                 "--reference", str(tmp_path / "ref" / "reference.jsonl"), "--budget", "0.15",
                 "--protocol", "official", "--out", str(tmp_path / "sel")]) == 0
    out = capsys.readouterr().out
    assert "records = " in out and "protocol official" in out
    summary = json.loads((tmp_path / "sel" / "summary.json").read_text())
    assert summary["protocol"] == "official" and summary["totals"]["unit"] == "records"
    cfg = json.loads((tmp_path / "sel" / "config.json").read_text())
    assert cfg["config"]["protocol"] == "official"
