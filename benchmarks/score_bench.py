"""IRS scoring throughput: batched (presel) vs batch size 1 (the official loop's shape), same model and data.

Both run :class:`presel.importance.scoring.Scorer` on the same samples (annotated LLaVA records about
synthetic images, 1-2 turns) and time the scoring loop only (model loaded and warmed up before):

- official-shaped loop: per sample and pass, decode the image, render, forward at batch size 1 with logits
  at every position, -log softmax over the vocabulary (the official code's loop, minus its fp16);
- ``bs1``: presel at batch size 1: one sample at a time, both passes, image decoded once, rendering then
  forward, nothing overlapped;
- ``bsN``: N samples per padded forward pass (per pass), batches rendered ahead by ``--render-workers``
  processes (as ``presel score`` does).

Rounds alternate between the settings; medians are printed. Target on CPU with the tiny model: batched
>= 4x the samples/s of batch size 1 (the official loop).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/score_bench.py                       # tiny LLaVA, 2 CPU cores
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/score_bench.py --model llava-small --samples 16 --batch-sizes 1,8
    .venv/bin/python benchmarks/score_bench.py --model DIR --device cuda --dtype bf16 --samples 256 --batch-sizes 1,16,64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def make_items(root: Path, n: int) -> list[dict]:
    from PIL import Image, ImageDraw

    names = ["red", "green", "blue", "yellow", "magenta", "cyan"]
    colours = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (240, 220, 20), (200, 40, 210), (20, 210, 220)]
    items = []
    for i in range(n):
        p = root / f"img{i}.png"
        img = Image.new("RGB", (160 + 7 * (i % 9), 120 + 5 * (i % 7)), colours[i % 6])
        ImageDraw.Draw(img).rectangle([10 + i % 13, 12, 60 + 3 * (i % 11), 90], fill=(255, 255, 255))
        img.save(p)
        turns = [["user", "<image>\nWhat colour is the background of this picture?"],
                 ["assistant", f"The background is {names[i % 6]}, with a white box on it."]]
        if i % 3 == 2:
            turns += [["user", "How many boxes are there?"], ["assistant", "There is exactly one white box."]]
        items.append({"id": f"s{i}", "task": "bench", "path": str(p), "turns": turns})
    return items


def run_once(scorer, items: list[dict], bs: int, workers: int) -> float:
    from presel.importance.scoring import plan_batches, score_stream

    batches = plan_batches(items, bs)  # as presel score batches them
    t0 = time.perf_counter()
    n = sum(len(r) for r in score_stream(scorer, batches, prefetch=bs > 1, render_workers=workers if bs > 1 else 0))
    dt = time.perf_counter() - t0
    assert n == len(items)
    return len(items) / dt


def official_loop(scorer, items: list[dict]) -> float:
    """The official code's shape: per sample and per pass, decode the image, render, one forward at batch
    size 1 with logits at every position, -log softmax over the vocabulary, mean over response tokens."""
    import torch

    from presel.features.images import load_rgb
    from presel.records import Turn
    from presel.vlm.render import encode_conversation

    t0 = time.perf_counter()
    for it in items:
        turns = tuple(Turn(r, t) for r, t in it["turns"])
        for drop in (False, True):
            e = encode_conversation(scorer.processor, load_rgb(it["path"]), turns, drop_question=drop)
            with torch.inference_mode():
                logits = scorer.model(input_ids=e.input_ids[None].to(scorer.device),
                                      **{k: v.to(scorer.device) for k, v in e.extras.items()}).logits[0]
                logp = -torch.log_softmax(logits.float(), dim=-1)
                pos = (e.labels[1:] != -100).nonzero()[:, 0].to(scorer.device)
                float(logp[pos, e.labels[1:].to(scorer.device)[pos]].mean())
    return len(items) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-llava", help="tiny-llava, llava-small, or a model directory / hub id")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,16", help="comma-separated; 1 is the baseline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--render-workers", type=int, default=2, help="processes rendering ahead (batched runs only)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()

    import threadpoolctl
    import torch

    from presel.cache import resolve_model
    from presel.importance.scoring import Scorer

    sizes = [int(x) for x in args.batch_sizes.split(",")]
    if 1 not in sizes:
        sizes = [1] + sizes
    model = resolve_model(args.model)
    print(f"model: {args.model} ({model})")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"cpus {os.cpu_count()}, device {args.device}, dtype {args.dtype}")
    for info in threadpoolctl.threadpool_info():
        print(f"BLAS/OpenMP: {info.get('internal_api')} {info.get('version')} threads={info.get('num_threads')} "
              f"({Path(info.get('filepath', '')).name})")
    scorer = Scorer(model, dtype=args.dtype, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        items = make_items(Path(tmp), args.samples)
        scorer.score(items[:2])  # warm-up
        scorer.score(items[:1])
        rates: dict[int, list[float]] = {b: [] for b in sizes}
        official: list[float] = []
        for r in range(args.rounds):
            official.append(official_loop(scorer, items))
            for b in sizes:
                rates[b].append(run_once(scorer, items, b, args.render_workers))
            print(f"round {r + 1}: official-shaped {official[-1]:.1f}/s, "
                  + ", ".join(f"bs{b} {rates[b][-1]:.1f}/s" for b in sizes), flush=True)
    base = statistics.median(rates[1])
    off = statistics.median(official)
    print(f"\n{args.samples} samples (2 passes each), median of {args.rounds} alternating rounds:")
    print(f"  official-shaped loop: {off:8.2f} samples/s   (batch 1, image decoded and rendered per pass, full logits)")
    for b in sizes:
        m = statistics.median(rates[b])
        print(f"  presel batch {b:>3}:    {m:8.2f} samples/s   {m / base:5.2f}x presel batch 1   {m / off:5.2f}x official-shaped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
