"""Embedding throughput by image source: the same images as files, as WebDataset tar shards and as a
Parquet file of image bytes, through ``embed_pool`` with the same model and settings.

Target (CPU): tar shards >= 0.9x the throughput of files. Runs alternate (files, tar, parquet, files, ...)
so a busy machine affects each source alike; the best of ``--repeats`` runs of each is reported.

    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/sources_bench.py --n 256 --image-size 112
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--model", default="dinov2-small")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--per-shard", type=int, default=64, help="images per tar shard")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(Path(__file__).parent))
    from embed_bench import make_images

    from presel.features.extract import EmbedConfig, embed_pool
    from presel.io.manifest import read_pool

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        names = make_images(d / "imgs", a.n)
        (d / "files.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "image": f"imgs/{n}", "task": "t"}) + "\n"
                                               for i, n in enumerate(names)))
        (d / "wds").mkdir()
        for s in range(0, a.n, a.per_shard):
            with tarfile.open(d / "wds" / f"shards-{s // a.per_shard:06d}.tar", "w") as tf:
                for i in range(s, min(a.n, s + a.per_shard)):
                    data = (d / "imgs" / names[i]).read_bytes()
                    ti = tarfile.TarInfo(f"{i:09d}.{names[i].rsplit('.', 1)[1]}")
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
        last = (a.n - 1) // a.per_shard
        pq.write_table(pa.table({"id": [f"r{i}" for i in range(a.n)],
                                 "image": [(d / "imgs" / n).read_bytes() for n in names]}),
                       d / "pool.parquet", row_group_size=a.per_shard)
        pools = {"files": read_pool(d / "files.jsonl"),
                 "tar": read_pool(str(d / "wds" / f"shards-{{000000..{last:06d}}}.tar"), default_task="t"),
                 "parquet": read_pool(d / "pool.parquet", default_task="t")}
        cfg = EmbedConfig(model=a.model, image_size=a.image_size, batch_size=a.batch_size, workers=a.workers,
                          device="cpu", progress=False)
        best: dict[str, float] = {}
        for r in range(a.repeats):
            for name, pool in pools.items():
                st = embed_pool(pool, d / f"out-{name}-{r}", cfg)
                best[name] = max(best.get(name, 0.0), float(st["extract_images_per_s"] or 0.0))
        print(json.dumps({"n": a.n, "model": a.model, "image_size": a.image_size, "workers": a.workers,
                          "images_per_s": best, "tar_vs_files": round(best["tar"] / best["files"], 3),
                          "parquet_vs_files": round(best["parquet"] / best["files"], 3)}, indent=1))


if __name__ == "__main__":
    main()
