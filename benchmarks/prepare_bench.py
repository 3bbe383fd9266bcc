"""Throughput and peak memory of ``presel prepare llava665k`` on a synthetic 665K-shaped file.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prepare_bench.py [--scale 30] [--splits]

``--scale S`` multiplies the default synthetic counts (about 3.3K records) by S; scale 200 is the real
file's size (665K records, about 0.5 GB here). Prints records/s, MB/s and the peak RSS of the prepare
step (measured in a child process so the generator's memory does not count).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from presel.prepare import prepare_llava665k
t = time.perf_counter()
s = prepare_llava665k(sys.argv[1], sys.argv[2], sys.argv[3], splits=(sys.argv[4] or None))
dt = time.perf_counter() - t
# VmHWM (not ru_maxrss, which keeps the forking parent's peak across exec)
hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:"))
print(json.dumps({"seconds": dt, "records": s["records_in_file"], "peak_rss_mb": hwm / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=30.0)
    ap.add_argument("--splits", action="store_true", help="also write split files and prepare with --splits")
    args = ap.parse_args()
    from presel.prepare.synthetic import DEFAULT_COUNTS, RULE_SOURCE, make_fake_665k, write_split_files

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        counts = {k: int(round(v * args.scale)) for k, v in DEFAULT_COUNTS.items()}
        t = time.perf_counter()
        truth = make_fake_665k(d / "fake.json", counts, seed=1)
        size_mb = (d / "fake.json").stat().st_size / 1e6
        print(f"generated {len(truth):,} records, {size_mb:.0f} MB in {time.perf_counter() - t:.1f} s")
        splits = ""
        if args.splits:
            write_split_files(d / "splits", d / "fake.json",
                              [None if s == "sharegpt" else RULE_SOURCE[s] for s in truth])
            splits = str(d / "splits")
        (d / "img").mkdir()
        env = dict(os.environ, OMP_NUM_THREADS="1")
        out = subprocess.run([sys.executable, "-c", CHILD, str(d / "fake.json"), str(d / "img"), str(d / "pool"), splits],
                             check=True, capture_output=True, text=True, env=env).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"prepare llava665k{' --splits' if args.splits else ''}: {r['records']:,} records in "
              f"{r['seconds']:.1f} s = {r['records'] / r['seconds']:,.0f} records/s, {size_mb / r['seconds']:.1f} MB/s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB (one core)")
        print(f"extrapolated to the real file (665,298 records, ~1 GB): "
              f"{665_298 / r['records'] * r['seconds']:.0f} s")


if __name__ == "__main__":
    main()
