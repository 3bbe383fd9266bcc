"""Online generation throughput against a local OpenAI-compatible server with a fixed latency.

The server (tests/generate/gen_fake_server.py, a ThreadingHTTPServer) runs in its own process and
answers every chat request after ``--latency`` seconds. With latency L and concurrency C the ideal
rate is C / L items/s; the client is not the bottleneck when the measured rate is close to it.
Both processes share this machine's cores, so at high rates the Python test server itself (one
thread per connection, JSON + base64 decoding) competes with the client: the CPU columns show who
spends what per item. Each item goes the whole way: image read + base64, HTTP request, JSON parse, validation, one
fsynced line in results.jsonl, then train.json at the end.

    .venv/bin/python benchmarks/generate_bench.py [--latency 0.05] [--image-kb 64] [--seconds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "generate"))


def _serve(latency: float, port_q: mp.Queue, stop_ev) -> None:
    from gen_fake_server import FakeOpenAI

    srv = FakeOpenAI(latency=latency)
    srv.keep_bodies = False
    port_q.put(srv.start())
    stop_ev.wait()
    srv.stop()


def _cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of a process (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _fsync_ms(folder: Path, n: int = 50) -> float:
    with open(folder / "fsync-probe", "a") as f:
        t0 = time.perf_counter()
        for _ in range(n):
            f.write("x" * 200 + "\n")
            f.flush()
            os.fsync(f.fileno())
    return (time.perf_counter() - t0) / n * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.05, help="server latency per request (s)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--seconds", type=float, default=3.0, help="target duration per setting (sets the item count)")
    ap.add_argument("--image-kb", type=int, default=64, help="image file size (base64-encoded into each request)")
    args = ap.parse_args()

    from gen_fake_server import make_selection

    from presel.generate.online import GenerateConfig, generate_to_dir

    ctx = mp.get_context("spawn")
    q, stop_ev = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve, args=(args.latency, q, stop_ev), daemon=True)
    proc.start()
    base_url = q.get(timeout=30)
    print(f"server: {base_url}, latency {args.latency * 1000:.0f} ms per request, separate process; "
          f"images {args.image_kb} KiB; cpus {os.cpu_count()}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"fsync of one results line: {_fsync_ms(Path(tmp)):.2f} ms (results are group-committed: one fsync per round of finished items)")
            print(f"{'concurrency':>11} {'items':>6} {'seconds':>8} {'items/s':>9} {'ideal C/L':>10} {'efficiency':>10} "
                  f"{'client CPU ms/item':>19} {'server CPU ms/item':>19}")
            for c in args.concurrency:
                n = max(20, int(args.seconds * c / args.latency))
                d = Path(tmp) / f"c{c}"
                d.mkdir()
                sel = make_selection(d, {f"i{k:06d}": ("vqa", "chart", "ocr")[k % 3] for k in range(n)},
                                     pad=args.image_kb * 1024)
                cfg = GenerateConfig(base_url=base_url, model="bench", concurrency=c, backoff_base=0.05)
                srv0 = _cpu_seconds(proc.pid)
                cpu0, t0 = time.process_time(), time.perf_counter()
                s = generate_to_dir(sel, d / "gen", cfg, progress=False)
                dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                srv1 = _cpu_seconds(proc.pid)
                srv = f"{(srv1 - srv0) / n * 1000:.2f}" if srv0 is not None and srv1 is not None else "n/a"
                assert s["generated"] == n, s
                ideal = c / args.latency
                print(f"{c:>11} {n:>6} {dt:>8.2f} {n / dt:>9.1f} {ideal:>10.1f} {n / dt / ideal:>10.0%} "
                      f"{cpu / n * 1000:>19.2f} {srv:>19}")
    finally:
        stop_ev.set()
        proc.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
