"""Benchmark of ``presel select`` against the official PreSel recipe (issue 2, part 7).

Synthetic clustered DINOv2-like features (d=768, L2-normalised, float16 memmap on disk) for a
pool shaped like LLaVA-1.5's mix: 10 tasks with the mix's relative sizes. Each configuration
runs in its own subprocess so peak RSS (ru_maxrss) is honest. Printed side by side:

  (a) this engine: ``presel.selection.select`` (faiss k-means, k-means++ seeding, exact
      blocked neighbour centrality, exact budget), with OPENBLAS_CORETYPE as given by the
      environment and with it unset (presel's own choice from /proc/cpuinfo);
  (b) the official recipe: scikit-learn ``KMeans(n_clusters, random_state=12345)`` with its
      defaults per task + exact per-cluster kNN centrality (k=5, non-reference items);

at N=100K (a and b) and N=665K (a only). Also prints which BLAS ran (threadpoolctl).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/select_bench.py                 # 100K (a, b) + 665K (a)
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/select_bench.py --n 20000 --official-max 20000
    .venv/bin/python benchmarks/select_bench.py --niter-sweep --n 15000           # faiss niter vs sklearn objective
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/select_bench.py --skewed --n 60000 --dim 384
        # 20 equal tasks vs one task holding 95% of the images, same N: the load case of issue 17

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/select_bench.py --n 100000 --skew-n 120000,1000000
        # the issue-25 table: presel vs official at 100K (wall and CPU ratios, objective ratio), then
        # balanced vs skewed at 120K and 1M (--kmeans flat,hierarchical,auto to compare modes)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/select_bench.py --hier-sweep --n 5000,20000,50000,114000
        # hierarchical vs flat k-means objective and CPU per task size (README "Selection at scale")

Earlier measurement (issue 17; 2 shared cores, OMP_NUM_THREADS=2, --skewed --dim 384): N=60K balanced 18.9 s / skewed 31.9 s
(1.7x), N=120K balanced 35.9 s / skewed 103.4 s (2.9x), peak RSS 412 vs 737 MB at 120K. The ratio grows
with N because a task's k-means costs n_t * C_t * d with C_t = n_t / images_per_cluster, i.e. the square
of the task size (Lloyd iterations and the k-means++ seeding alike); one task with 95% of the pool does
about 0.95^2 / (20 * 0.05^2) = 18x the k-means work of 20 equal tasks. Profile (cProfile, 60K skewed):
faiss Lloyd 54%, k-means++ seeding 26%, final assignment 11%, per-cluster centrality 5%.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# LLaVA-1.5 mix665k image tasks (issue #702 counts; LLaVA-158K split into its three parts,
# VQAv2 + OKVQA merged): relative sizes only.
TASKS = {
    "llava_conv": 56_681, "llava_detail": 23_240, "llava_complex": 76_643, "vqav2_okvqa": 91_781,
    "gqa": 72_140, "ocrvqa": 80_000, "aokvqa": 66_160, "textcaps": 21_953, "refcoco": 48_447, "vg": 86_417,
}
D = 768


def shaped_sizes(n: int, shape: str, n_tasks: int = 20) -> dict[str, int]:
    """``balanced``: ``n_tasks`` equal tasks; ``skewed``: one task with 95% of ``n``, the rest split equally."""
    if shape == "balanced":
        sizes = [n // n_tasks] * n_tasks
    else:
        big = int(round(0.95 * n))
        sizes = [big] + [(n - big) // (n_tasks - 1)] * (n_tasks - 1)
    sizes[-1] += n - sum(sizes)
    return {f"task{i:02d}": m for i, m in enumerate(sizes)}


SHAPE = os.environ.get("PRESEL_BENCH_SHAPE", "mix")  # mix (LLaVA-1.5 tasks), balanced or skewed


def task_sizes(n: int) -> dict[str, int]:
    if SHAPE != "mix":
        return shaped_sizes(n, SHAPE)
    total = sum(TASKS.values())
    from presel.selection.budget import allocate

    sizes = allocate(n, np.array(list(TASKS.values()), dtype=np.float64), np.full(len(TASKS), n))
    assert sizes.sum() == n and total > 0
    return dict(zip(TASKS, sizes.tolist()))


def generate(n: int, workdir: Path, seed: int = 0) -> Path:
    """Write ``feats_{n}.npy`` (float16, N x D) chunk by chunk; returns its path (reused if present)."""
    path = workdir / (f"feats_{n}.npy" if SHAPE == "mix" and D == 768 else f"feats_{SHAPE}_{n}x{D}.npy")
    if path.exists():
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / f".feats_{n}.tmp.npy"
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, D))
    rng = np.random.default_rng(seed)
    start = 0
    for task, m in task_sizes(n).items():
        t = rng.standard_normal(D).astype(np.float32)
        t /= np.linalg.norm(t)
        n_true = max(2, m // 150)  # "concepts" per task, not the k-means C
        centres = t + rng.standard_normal((n_true, D)).astype(np.float32) * (0.8 / np.sqrt(D))
        p = rng.lognormal(0.0, 1.0, n_true)
        p /= p.sum()
        spread = rng.uniform(0.4, 1.0, n_true).astype(np.float32)
        for s in range(0, m, 50_000):
            e = min(m, s + 50_000)
            lab = rng.choice(n_true, size=e - s, p=p)
            x = centres[lab] + rng.standard_normal((e - s, D)).astype(np.float32) * (spread[lab, None] / np.sqrt(D))
            out = rng.random(e - s) < 0.02  # 2% outliers anywhere on the sphere
            x[out] = rng.standard_normal((int(out.sum()), D)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            arr[start + s:start + e] = x.astype(np.float16)
        start += m
        print(f"  generated {task}: {m}", file=sys.stderr, flush=True)
    arr.flush()
    del arr
    os.replace(tmp, path)
    return path


def _pool_and_reference(n: int, seed: int = 0):
    """Pool records (ids = row numbers) and a stratified 5% reference set per task."""
    from presel.records import Pool, PoolRecord

    recs = []
    ref = []
    rng = np.random.default_rng(seed + 1)
    start = 0
    for task, m in task_sizes(n).items():
        for i in range(start, start + m):
            recs.append(PoolRecord(str(i), f"{task}/{i}.jpg", task, i + 1))
        k = max(1, int(0.05 * m))
        ref.extend(str(start + j) for j in np.sort(rng.choice(m, size=k, replace=False)))
        start += m
    return Pool(recs, Path("synthetic.jsonl"), Path(".")), ref


def _blas() -> list[str]:
    import threadpoolctl

    return [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture') or ''} threads={i.get('num_threads')} "
            f"({Path(i.get('filepath', '')).name})" for i in threadpoolctl.threadpool_info()]


def run_engine(npy: Path, n: int, backend: str, mode: str = "auto") -> dict:
    from presel.io.features import FeatureMatrix
    from presel.selection.kmeans import _import_faiss
    from presel.selection.select import SelectConfig, select

    if backend == "faiss":
        _import_faiss()
    t0 = time.perf_counter()
    pool, ref = _pool_and_reference(n)
    arr = np.load(npy, mmap_mode="r")
    fm = FeatureMatrix([([str(i) for i in range(n)], arr)], source=str(npy))
    rng = np.random.default_rng(7)
    names = list(task_sizes(n))
    scores = rng.uniform(0.6, 1.0, len(names))
    tau = 1 / np.sqrt(len(names))
    w = np.exp(-scores / tau)
    weights = {t: float(x / w.sum()) for t, x in zip(names, w)}
    t1 = time.perf_counter()
    res = select(pool, fm, weights=weights, reference=ref,
                 config=SelectConfig(budget=0.15, kmeans_backend=backend, seed=0, kmeans=mode))
    t2 = time.perf_counter()
    tot = res.summary["totals"]
    assert tot["total"] == tot["budget"], tot
    return {"select_s": t2 - t1, "setup_s": t1 - t0, "objective": tot["kmeans_objective"],
            "clusters": sum(t["clusters"] for t in res.summary["tasks"].values()), "selected": tot["total"],
            "budget": tot["budget"], "blas": _blas()}


def run_official(npy: Path, n: int) -> dict:
    """Official recipe: per task sklearn KMeans(C, random_state=12345) defaults + exact per-cluster kNN."""
    from sklearn.cluster import KMeans

    from presel.selection.centrality import neighbour_centrality

    t0 = time.perf_counter()
    pool, ref = _pool_and_reference(n)
    refset = {int(r) for r in ref}
    arr = np.load(npy, mmap_mode="r")
    t1 = time.perf_counter()
    objective = 0.0
    clusters = 0
    start = 0
    for _task, m in task_sizes(n).items():
        x = np.asarray(arr[start:start + m], dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        c = max(1, m // 100)  # official: len(task) / 100 clusters
        km = KMeans(n_clusters=c, random_state=12345).fit(x)
        objective += float(km.inertia_)
        clusters += c
        avail = np.array([start + i not in refset for i in range(m)])
        for j in range(c):
            mem = np.nonzero((km.labels_ == j) & avail)[0]
            if len(mem):
                neighbour_centrality(x[mem], 5)
        start += m
    t2 = time.perf_counter()
    return {"select_s": t2 - t1, "setup_s": t1 - t0, "objective": objective, "clusters": clusters,
            "blas": _blas()}


def niter_sweep(npy: Path, n: int) -> None:
    """faiss objective vs scikit-learn's on the first task, for several niter."""
    from presel.selection.kmeans import kmeans

    m = next(iter(task_sizes(n).values()))
    x = np.asarray(np.load(npy, mmap_mode="r")[:m], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = max(1, round(m / 100))
    t = time.perf_counter()
    ref = kmeans(x, c, backend="sklearn", seed=12345)
    print(f"task of {m} images, C={c}: sklearn objective {ref.objective:.2f} ({time.perf_counter() - t:.1f} s)")
    for niter in (5, 10, 15, 20, 25, 40):
        for seed in (0, 1):
            t = time.perf_counter()
            r = kmeans(x, c, backend="faiss", seed=seed, niter=niter)
            print(f"  faiss niter={niter:2d} seed={seed}: objective {r.objective:.2f} "
                  f"({(r.objective / ref.objective - 1) * 100:+.2f}% vs sklearn) {time.perf_counter() - t:.2f} s", flush=True)


def hier_sweep(sizes: list[int], work: Path) -> None:
    """Objective and CPU time of hierarchical vs flat k-means (same C = n / 100) on one task of each size.

    The rows are the first ``n`` images of the big task of a 95%-skewed pool of ``max(sizes) / 0.95`` images."""
    global SHAPE
    from presel.selection.kmeans import default_groups, hierarchical_kmeans, kmeans

    SHAPE = "skewed"
    total = int(np.ceil(max(sizes) / 0.95))
    arr = np.load(generate(total, work), mmap_mode="r")
    print(f"{'task n':>8}  {'C':>6}  {'G':>4}  {'flat objective':>14}  {'hier objective':>14}  {'hier / flat':>11}  "
          f"{'flat cpu s':>10}  {'hier cpu s':>10}")
    for n in sizes:
        x = np.asarray(arr[:n], dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        c = max(1, round(n / 100))
        t = time.process_time()
        f = kmeans(x, c, seed=0)
        tf = time.process_time() - t
        t = time.process_time()
        h = hierarchical_kmeans(x, c, seed=0)
        th = time.process_time() - t
        print(f"{n:>8}  {c:>6}  {default_groups(c):>4}  {f.objective:14.1f}  {h.objective:14.1f}  "
              f"{h.objective / f.objective:11.4f}  {tf:10.1f}  {th:10.1f}", flush=True)


def skew_compare(sizes: list[int], work: Path, coretype: str | None, timeout: float,
                 modes: tuple[str, ...] = ("auto",)) -> None:
    """Balanced vs skewed task sizes at the same N: select time, peak RSS and the ratio."""
    global SHAPE
    print(f"{'N':>7}  {'dim':>4}  {'shape':9}  {'kmeans':12}  {'largest task':>12}  {'clusters':>8}  {'select s':>9}  "
          f"{'cpu s':>7}  {'peak RSS MB':>11}  {'objective':>10}  {'vs balanced (wall, cpu)':>23}")
    for n in sizes:
        for mode in modes:
            base = None
            for shape in ("balanced", "skewed"):
                SHAPE = shape
                r = _spawn("faiss", generate(n, work), n, coretype, timeout, mode)
                if "error" in r:
                    print(f"{n:>7}  {D:>4}  {shape:9}  {mode:12}  ERROR {r['error']}", flush=True)
                    continue
                base = r if shape == "balanced" else base
                rel = (f"{r['select_s'] / base['select_s']:.2f}x, {r['select_cpu_s'] / base['select_cpu_s']:.2f}x"
                       if base is not None else "")
                print(f"{n:>7}  {D:>4}  {shape:9}  {mode:12}  {max(shaped_sizes(n, shape).values()):>12}  "
                      f"{r['clusters']:>8}  {r['select_s']:9.1f}  {r['select_cpu_s']:7.1f}  {r['peak_rss_mb']:11.0f}  "
                      f"{r['objective']:10.1f}  {rel:>23}", flush=True)


def _child(args) -> None:
    t0 = time.perf_counter()
    c0 = time.process_time()
    out = run_official(args.npy, args.n) if args.child == "official" else run_engine(args.npy, args.n, args.child,
                                                                                       args.kmeans)
    out["select_cpu_s"] = time.process_time() - c0 - out.get("setup_s", 0.0)  # setup is single-threaded
    out["wall_s"] = time.perf_counter() - t0
    out["shape"] = SHAPE
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_mb"] = ru.ru_maxrss / 1024
    out["cpu_s"] = ru.ru_utime + ru.ru_stime
    print("RESULT " + json.dumps(out), flush=True)


def _spawn(kind: str, npy: Path, n: int, coretype: str | None, timeout: float, mode: str = "auto") -> dict:
    env = dict(os.environ)
    if coretype is None:
        env.pop("OPENBLAS_CORETYPE", None)
    else:
        env["OPENBLAS_CORETYPE"] = coretype
    cmd = [sys.executable, __file__, "--child", kind, "--npy", str(npy), "--n", str(n), "--dim", str(D), "--kmeans", mode]
    env["PRESEL_BENCH_SHAPE"] = SHAPE
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (p.stderr or p.stdout)[-2000:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="100000,665000", help="comma-separated pool sizes")
    ap.add_argument("--official-max", type=int, default=100_000, help="run the official recipe only up to this N")
    ap.add_argument("--workdir", default="/tmp/presel-select-bench", help="where the synthetic features go")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--niter-sweep", action="store_true", help="print faiss niter vs sklearn objective and exit")
    ap.add_argument("--skewed", action="store_true",
                    help="compare 20 equal tasks with one task holding 95%% of the images (same N), engine only")
    ap.add_argument("--dim", type=int, default=768, help="feature dimension of the synthetic pool")
    ap.add_argument("--kmeans", default="auto", help="select.kmeans for the engine: flat | hierarchical | auto; "
                    "with --skewed a comma-separated list runs each")
    ap.add_argument("--skew-n", default="120000,1000000",
                    help="after the main table: balanced vs 95%%-skewed pools of these sizes ('' to skip)")
    ap.add_argument("--hier-sweep", action="store_true",
                    help="per task size (--n): hierarchical vs flat k-means objective and CPU time, then exit")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--npy", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global D
    D = args.dim
    if args.child:
        args.n = int(args.n)
        _child(args)
        return
    sizes = [int(s) for s in args.n.split(",")]
    work = Path(args.workdir)
    given = os.environ.get("OPENBLAS_CORETYPE")
    print(f"cores: {os.cpu_count()}  OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}  "
          f"OPENBLAS_CORETYPE as given: {given!r}", flush=True)
    if args.niter_sweep:
        niter_sweep(generate(sizes[0], work), sizes[0])
        return
    if args.hier_sweep:
        hier_sweep(sizes, work)
        return
    if args.skewed:
        skew_compare(sizes, work, given, args.timeout, tuple(args.kmeans.split(",")))
        return
    rows = []
    for n in sizes:
        npy = generate(n, work)
        configs = [(f"a: presel engine (faiss, kmeans {args.kmeans.split(',')[0]})", "faiss", given, "as given")]
        if given is not None:
            configs.append(("a: presel engine (faiss)", "faiss", None, "unset: presel picks"))
        if n <= args.official_max:
            configs.append(("b: official (sklearn KMeans + kNN)", "official", given, "as given"))
        for label, kind, core, core_label in configs:
            r = _spawn(kind, npy, n, core, args.timeout, args.kmeans.split(",")[0])
            rows.append((n, label, core_label, r))
            if "error" in r:
                print(f"N={n} {label} [{core_label}]: ERROR {r['error']}", flush=True)
                continue
            print(f"N={n} {label} [OPENBLAS_CORETYPE {core_label}]: select {r['select_s']:.1f} s, wall {r['wall_s']:.1f} s, "
                  f"cpu {r['cpu_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, objective {r['objective']:.1f}, clusters {r['clusters']}", flush=True)
            for b in r["blas"]:
                print(f"    BLAS: {b}", flush=True)
    print()
    print(f"{'N':>7}  {'configuration':36}  {'OPENBLAS_CORETYPE':20}  {'select s':>9}  {'wall s':>8}  {'cpu s':>8}  {'peak RSS MB':>11}  "
          f"{'k-means objective':>17}  {'vs b':>8}")
    for n, label, core_label, r in rows:
        if "error" in r:
            print(f"{n:>7}  {label:36}  {core_label:20}  error")
            continue
        b = next((x for m, lab, _, x in rows if m == n and lab.startswith("b:") and "error" not in x), None)
        rel = "" if b is None else f"{(r['objective'] / b['objective'] - 1) * 100:+.2f}%"
        speed = "" if b is None or label.startswith("b:") else (
            f"  {b['select_s'] / r['select_s']:.1f}x faster than b (wall), {b['select_cpu_s'] / r['select_cpu_s']:.1f}x "
            f"(cpu); objective {r['objective'] / b['objective']:.4f}x b's")
        print(f"{n:>7}  {label:36}  {core_label:20}  {r['select_s']:9.1f}  {r['wall_s']:8.1f}  {r['cpu_s']:8.1f}  {r['peak_rss_mb']:11.0f}  "
              f"{r['objective']:17.1f}  {rel:>8}{speed}")


    skew = [int(x) for x in args.skew_n.split(",") if x]
    if skew:
        print()
        skew_compare(skew, work, given, args.timeout, tuple(args.kmeans.split(",")))


if __name__ == "__main__":
    main()
