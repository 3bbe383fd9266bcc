"""Exact duplicates (same bytes under two paths) are one image; near-duplicates are grouped by `presel dedup`
and dropped down to one per group by `select --dedup`."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from presel.cli import main


def _photo(i: int) -> np.ndarray:
    rng = np.random.default_rng(500 + i)
    return rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)


def test_byte_identical_files_under_two_paths_are_picked_once(tmp_path, tiny_dinov2):
    from PIL import Image

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    recs = []
    for i in range(4):
        Image.fromarray(_photo(i)).save(tmp_path / "a" / f"{i}.png")
        recs.append({"id": f"a{i}", "image": f"a/{i}.png", "task": "ta"})
    for i in range(4):
        if i == 0:  # the same bytes as a/0.png, under another path, in another task
            shutil.copyfile(tmp_path / "a" / "0.png", tmp_path / "b" / "copy.png")
            recs.append({"id": "b0", "image": "b/copy.png", "task": "tb"})
        else:
            Image.fromarray(_photo(10 + i)).save(tmp_path / "b" / f"{i}.png")
            recs.append({"id": f"b{i}", "image": f"b/{i}.png", "task": "tb"})
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in recs))
    feats = tmp_path / "feats"
    assert main(["embed", "--pool", str(pool), "--model", str(tiny_dinov2), "--out", str(feats), "--workers", "0",
                 "--no-progress"]) == 0
    emb = json.loads((feats / "summary.json").read_text())
    assert emb["distinct_images"] == 8 and emb["distinct_contents"] == 7 and emb["content_duplicates"] == 1
    assert emb["store_vectors"] == 7  # embedded once
    # the whole pool: 7 distinct images, the shared picture once
    out = tmp_path / "sel"
    assert main(["select", "--pool", str(pool), "--features", str(feats), "--budget", "1.0", "--task-weights",
                 "uniform", "--images-per-cluster", "2", "--out", str(out)]) == 0
    rows = pq.read_table(out / "selection.parquet").to_pylist()
    tot = json.loads((out / "summary.json").read_text())["totals"]
    assert tot["distinct_images"] == 7 and tot["content_duplicate_images"] == 1
    assert len(rows) == 7
    picked = {r["image"] for r in rows}
    assert len(picked & {"a/0.png", "b/copy.png"}) == 1
    # asking for 8 images is refused: there are only 7 distinct ones
    assert main(["select", "--pool", str(pool), "--features", str(feats), "--budget-count", "8", "--task-weights",
                 "uniform", "--images-per-cluster", "2", "--out", str(tmp_path / "sel8")]) == 2
    # --allow-repeats: the shared picture may serve both of its tasks
    out = tmp_path / "rep"
    assert main(["select", "--pool", str(pool), "--features", str(feats), "--budget-count", "7", "--task-weights",
                 "uniform", "--images-per-cluster", "2", "--allow-repeats", "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["totals"]["selected"] == 7


def planted(n: int = 400, dim: int = 48, seed: int = 0):
    """Clustered unit vectors plus planted near-copies: pairs (0,1) ... and one chain group of three."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, dim))
    x = centers[rng.integers(0, 20, n)] + 0.8 * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    groups = []
    for g in range(15):
        src = 10 * g
        copies = [src + 1] if g else [src + 1, src + 2]
        for c in copies:
            y = x[src] + 0.05 * rng.standard_normal(dim) / np.sqrt(dim) * 4
            x[c] = y / np.linalg.norm(y)
        groups.append({src, *copies})
    return x.astype(np.float16), groups


def test_planted_near_copies_are_grouped(tmp_path):
    from presel.io.features import FeatureMatrix
    from presel.selection.neardup import DedupConfig, find_groups

    x, truth = planted()
    keys = [f"img/{i:04d}.jpg" for i in range(len(x))]
    fm = FeatureMatrix([(keys, x)], source="mem")
    for cfg in (DedupConfig(threshold=0.95), DedupConfig(threshold=0.95, exact_max=0, nlist=8, nprobe=3)):
        res = find_groups(fm, keys, cfg)
        g = res["groups"]
        found: dict[int, set[int]] = {}
        for gid, k in zip(g["group"], g["key"]):
            found.setdefault(gid, set()).add(keys.index(k))
        assert sorted(map(sorted, found.values())) == sorted(map(sorted, truth))
        # one kept per group: the first in key order; the three-image group comes first (largest)
        kept = [k for k, keep in zip(g["key"], g["keep"]) if keep]
        assert len(kept) == 15 and kept[0] == keys[0] and g["size"][0] == 3
        assert res["summary"]["dropped"] == 16 and res["summary"]["kept"] == len(keys) - 16


def test_dedup_cli_and_select_drop_near_copies(tmp_path):
    x, truth = planted()
    n = len(x)
    keys = [f"img/{i:04d}.jpg" for i in range(n)]
    np.save(tmp_path / "f.npy", x)
    (tmp_path / "ids.txt").write_text("\n".join(keys) + "\n")
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"r{i}", "image": k, "task": "ab"[i % 2]}) + "\n"
                            for i, k in enumerate(keys)))
    d = tmp_path / "dd"
    base = ["--features", str(tmp_path / "f.npy"), "--feature-ids", str(tmp_path / "ids.txt")]
    assert main(["dedup", *base, "--threshold", "0.95", "--out", str(d)]) == 0
    groups = pq.read_table(d / "groups.parquet").to_pylist()
    assert len({r["group"] for r in groups}) == 15 and sum(not r["keep"] for r in groups) == 16
    keep = (d / "keep.txt").read_text().split()
    assert len(keep) == n - 16
    # per task: the planted pairs (src, src+1) sit in different tasks, so only the chain's (0, 2) pair groups
    assert main(["dedup", *base, "--pool", str(pool), "--scope", "task", "--out", str(tmp_path / "dt")]) == 0
    s = json.loads((tmp_path / "dt" / "summary.json").read_text())
    assert s["groups"] == 1 and s["images_in_groups"] == 2
    assert main(["dedup", *base, "--scope", "task", "--out", str(tmp_path / "dx")]) == 2  # needs --pool
    # select: every near-copy but one per group is left out before clustering
    out = tmp_path / "sel"
    assert main(["select", "--pool", str(pool), *base, "--budget", "1.0", "--task-weights", "uniform",
                 "--dedup", str(d), "--out", str(out)]) == 0
    rows = pq.read_table(out / "selection.parquet").to_pylist()
    tot = json.loads((out / "summary.json").read_text())["totals"]
    assert tot["near_duplicate_images_dropped"] == 16 and len(rows) == n - 16
    chosen = {keys.index(r["image"]) for r in rows}
    assert all(len(chosen & g) == 1 for g in truth)


@pytest.mark.parametrize("threshold", [0.0, 1.5])
def test_dedup_rejects_bad_threshold(threshold):
    from presel.errors import PreselError
    from presel.selection.neardup import DedupConfig

    with pytest.raises(PreselError, match="threshold"):
        DedupConfig(threshold=threshold)
