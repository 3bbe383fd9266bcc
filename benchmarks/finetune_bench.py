"""Fine-tuning throughput: training tokens/s and peak memory of ``presel.finetune.finetune``.

Data: synthetic LLaVA conversations (seeded): rendered images (gradients + shapes) with a question and an
answer of ``--answer-words`` words; every sample costs (image tokens + ~20 prompt tokens + answer tokens).
The whole ``finetune`` call runs (reading, image checks, rendering in the loop, LoRA / projector training,
merge and save). Tokens/s counts all non-padding input tokens (image tokens included) of the steps after the
first (warm-up) step; peak memory is the process max RSS on CPU (model loading included) and
``torch.cuda.max_memory_allocated`` on CUDA.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/finetune_bench.py               # CPU, llava-small
        (offline DINOv2-S + SmolLM2-135M, LoRA r=128 + projector, fp32, 4 steps of batch 2)
    .venv/bin/python benchmarks/finetune_bench.py --device cuda --shape llava-7b --batch-size 16 --steps 10
        GPU session: a LLaVA-1.5-7B-shaped model (ViT-L/14-sized DINOv2 at 336 px = 576 image tokens,
        Llama-7B-sized language model, random weights, bf16, gradient checkpointing), LoRA r=128.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = ("the a chart shows red blue green value rises falls between two large small left right top bottom "
         "circle square line bar peak year total count about more less than three four five").split()


def make_data(root: Path, n: int, answer_words: int, seed: int = 0) -> Path:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(n):
        w, h = int(rng.integers(200, 400)), int(rng.integers(200, 400))
        a = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * rng.uniform(0.2, 1.0, (1, 1, 3))
        img = Image.fromarray(np.broadcast_to(a, (h, w, 3)).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(4):
            x, y = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            d.rectangle([x, y, x + 30, y + 30], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        img.save(root / "img" / f"{i}.jpg", quality=90)
        answer = " ".join(rng.choice(WORDS, answer_words)) + "."
        recs.append({"id": str(i), "image": f"img/{i}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nDescribe what the image shows in detail."},
            {"from": "gpt", "value": answer.capitalize()}]})
    p = root / "train.json"
    p.write_text(json.dumps(recs))
    return p


def build_llava7b_shaped(src: str, dst: Path) -> Path:
    """A LLaVA-1.5-7B-shaped model with random weights (bf16, built on the GPU) and ``src``'s processor at 336 px."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    cfg = AutoConfig.from_pretrained(src)
    t = cfg.text_config
    for k, v in dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, head_dim=128, max_position_embeddings=4096).items():
        setattr(t, k, v)
    vc = cfg.vision_config
    for k, v in dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     mlp_ratio=4).items():
        if hasattr(vc, k):
            setattr(vc, k, v)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(dst)
    del model
    torch.cuda.empty_cache()
    proc = AutoProcessor.from_pretrained(src)
    ip = proc.image_processor
    ip.size = {"shortest_edge": 336} if "shortest_edge" in (ip.size or {}) else {"height": 336, "width": 336}
    if getattr(ip, "crop_size", None):
        ip.crop_size = {"height": 336, "width": 336}
    proc.save_pretrained(dst)
    return dst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llava-small", help="model dir, hub id, llava-small or tiny-llava")
    ap.add_argument("--shape", choices=["none", "llava-7b"], default="none",
                    help="llava-7b: random-weight LLaVA-1.5-7B-shaped model built from --model's config (CUDA)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--steps", type=int, default=4, help="measured steps (one warm-up step is added)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--answer-words", type=int, default=60)
    ap.add_argument("--lora-r", type=int, default=128)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--gradient-checkpointing", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--keep", default=None, help="keep the output model here (default: temporary)")
    args = ap.parse_args()

    import threadpoolctl
    import torch

    from presel.cache import resolve_model
    from presel.finetune.train import FinetuneConfig, finetune

    tmp = Path(tempfile.mkdtemp(prefix="finetune_bench_"))
    try:
        n = (args.steps + 1) * args.batch_size * args.grad_accum
        data = make_data(tmp / "data", n, args.answer_words)
        model = resolve_model(args.model)
        if args.shape == "llava-7b":
            if not args.device.startswith("cuda"):
                print("--shape llava-7b needs --device cuda", file=sys.stderr)
                return 2
            t = time.perf_counter()
            model = str(build_llava7b_shaped(model, tmp / "llava7b"))
            print(f"built LLaVA-7B-shaped model in {time.perf_counter() - t:.0f}s")
        gc = None if args.gradient_checkpointing == "auto" else args.gradient_checkpointing == "on"
        cfg = FinetuneConfig(full=args.full, lora_r=args.lora_r, lora_alpha=2.0 * args.lora_r, batch_size=args.batch_size,
                             grad_accum=args.grad_accum, max_steps=args.steps + 1, dtype=args.dtype, device=args.device,
                             gradient_checkpointing=gc, save_every_steps=0, log_every=1, num_workers=args.workers,
                             warmup_ratio=0.0)
        out = Path(args.keep) if args.keep else tmp / "out"
        t0 = time.perf_counter()
        finetune(data, model, out, cfg, overwrite=True)
        wall = time.perf_counter() - t0
        summary = json.loads((out / "summary.json").read_text())
        rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
        steady = rows[1:]
        secs = steady[-1]["elapsed"] - rows[0]["elapsed"]
        tok = sum(r["tokens"] for r in steady)
        resp = sum(r["response_tokens"] for r in steady)
        blas = [{k: d.get(k) for k in ("internal_api", "num_threads", "version")}
                for d in threadpoolctl.threadpool_info()]
        print(f"model        {args.model}{' (LLaVA-7B-shaped)' if args.shape != 'none' else ''}: "
              f"{summary['total_params'] / 1e6:.1f}M params, {summary['trainable_params'] / 1e6:.2f}M trained "
              f"({summary['mode']}{'' if args.full else f' r={args.lora_r}'} + projector)")
        print(f"device       {summary['device']} {summary['dtype']}, gradient checkpointing "
              f"{summary['gradient_checkpointing']}, torch threads {torch.get_num_threads()}, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
        print(f"blas         {blas}")
        print(f"batch        {args.batch_size} x {args.grad_accum}, {tok / len(steady) / (args.batch_size * args.grad_accum):.0f} "
              f"tokens/sample ({resp / len(steady) / (args.batch_size * args.grad_accum):.0f} response)")
        print(f"first step   {rows[0]['elapsed']:.2f}s (warm-up, excluded)")
        print(f"steady       {len(steady)} steps in {secs:.2f}s: {secs / len(steady):.2f} s/step, "
              f"{tok / secs:.0f} tokens/s, {resp / secs:.0f} response tokens/s, {len(steady) * args.batch_size * args.grad_accum / secs:.2f} samples/s")
        print(f"peak memory  {summary['peak_memory_bytes'] / 2**30:.2f} GiB "
              f"({'cuda max allocated' if summary['device'].startswith('cuda') else 'process max RSS, model loading included'})")
        print(f"loss         {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}")
        print(f"end to end   {wall:.1f}s (reading, image checks, model load, training, merge + save)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
