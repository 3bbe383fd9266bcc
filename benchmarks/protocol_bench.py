"""``protocol: paper`` vs ``protocol: official`` on a LLaVA-665K-shaped synthetic pool.

Prints, for a pool written by ``presel.prepare.synthetic.make_fake_665k`` (``--scale`` times its default
counts, tasks sharing COCO images, several records per image) and prepared with the built-in rules:

- the reference set under the former rule (5% of each task's distinct images, summed), under ``paper``
  (5% of the distinct pool images, stratified by task) and under ``official`` (5% of each task's records);
- one 15% selection per protocol on random clustered d-dimensional features (one vector per image):
  wall time, budget, reference, new picks, and the distinct images the picks cover.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/protocol_bench.py --scale 10
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=10, help="multiple of the synthetic file's default counts (~3.1K records)")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import numpy as np

    from presel.cli import main as cli
    from presel.importance.reference import ReferenceConfig, sample_reference, task_quota
    from presel.io.features import FeatureMatrix
    from presel.io.manifest import read_pool
    from presel.prepare.synthetic import DEFAULT_COUNTS, make_fake_665k
    from presel.selection import SelectConfig, select

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_fake_665k(root / "ann.json", {k: v * args.scale for k, v in DEFAULT_COUNTS.items()}, seed=args.seed)
        with contextlib.redirect_stdout(io.StringIO()):
            cli(["prepare", "llava665k", "--annotations", str(root / "ann.json"), "--image-root", str(root),
                 "--out", str(root / "pool")])
        pool = read_pool(root / "pool" / "pool.jsonl", image_root=root)
    images = pool.distinct_images()
    n_img, n_rec = len(images), len(pool.records)
    per_task: dict[str, set[str]] = {}
    for r in pool.records:
        per_task.setdefault(r.task, set()).add(r.image_key)
    print(f"pool: {n_rec:,} records, {n_img:,} distinct images, {len(per_task)} tasks")
    old = sum(task_quota(len(v), ReferenceConfig()) for v in per_task.values())
    print(f"reference, former rule (5% of each task's distinct images, summed): {old:,} = {old / n_img:.2%} of images")
    refs = {p: [r.id for r in sample_reference(pool, ReferenceConfig(protocol=p))] for p in ("paper", "official")}
    print(f"reference, paper (5% of distinct pool images, stratified):         {len(refs['paper']):,} = "
          f"{len(refs['paper']) / n_img:.2%} of images")
    print(f"reference, official (5% of each task's records):                    {len(refs['official']):,} = "
          f"{len(refs['official']) / n_rec:.2%} of records")

    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((50, args.dim)).astype(np.float32)
    x = (centres[rng.integers(0, 50, n_img)] + 0.5 * rng.standard_normal((n_img, args.dim))).astype(np.float32)
    fm = FeatureMatrix([(images, x)], source="synthetic")
    weights = {t: 1.0 for t in per_task}
    by_id = pool.by_id()
    for p in ("paper", "official"):
        t0 = time.perf_counter()
        res = select(pool, fm, weights=weights, reference=refs[p], config=SelectConfig(budget=0.15, protocol=p))
        dt = time.perf_counter() - t0
        tot = res.summary["totals"]
        picked = {pool.records[by_id[i]].image_key for i, s in zip(res.selection["id"], res.selection["source"])
                  if s == "selected"}
        print(f"select {p:<8} {dt:7.1f} s  budget {tot['budget']:,} = {tot['reference']:,} reference + "
              f"{tot['selected']:,} new {tot.get('unit', 'images')}; the new picks cover {len(picked):,} distinct images")


if __name__ == "__main__":
    main()
