"""Feature-extraction throughput: the whole ``embed_pool`` pipeline vs the model alone.

Images: a few hundred real photos (scikit-image's sample photos, randomly cropped, resized to
256-640 px and re-encoded as JPEG or PNG, seeded). Two measurements at the same batch size:

- model only: forward passes (incl. the on-device normalisation) over pre-decoded uint8 batches;
- pipeline: ``presel.features.extract.embed_pool`` into a fresh store: hashing, decode + resize in
  DataLoader workers, inference, shard writing, index; end to end (model loading included).

Target on CPU: pipeline >= 0.8x model-only with 2 workers.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/embed_bench.py                 # CPU, offline DINOv2-S
    .venv/bin/python benchmarks/embed_bench.py --device cuda --workers 16        # GPU session:
        DINOv2-base-shaped model (random weights, same compute), batch 256, bf16, 224 px; prints images/s
        against the bf16 compute bound (--peak-tflops, default 989 = H100/H200 SXM dense bf16)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_PHOTOS: list = []


def _photos() -> list:
    import skimage.data as sk
    from PIL import Image

    if _PHOTOS:
        return _PHOTOS
    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page", "text", "clock",
             "horse", "hubble_deep_field", "immunohistochemistry", "motorcycle_left", "retina", "cat",
             "colorwheel", "grass", "gravel", "brick", "logo", "microaneurysms", "eagle"]
    for name in names:
        f = getattr(sk, name, None)
        if f is None:
            continue
        try:
            a = np.asarray(f())
        except Exception:  # noqa: BLE001 - some samples need pooch downloads; skip those
            continue
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        _PHOTOS.append(Image.fromarray(a[..., :3].astype(np.uint8)).convert("RGB"))
    return _PHOTOS


def _make_one(args: tuple[Path, int, int]) -> str:
    from PIL import Image

    d, i, seed = args
    photos = _photos()
    rng = np.random.default_rng([seed, i])  # per image: the set does not depend on how it is split
    img = photos[i % len(photos)]
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    side = int(rng.integers(256, 641))
    crop = img.crop((x, y, x + cw, y + ch))
    scale = side / max(cw, ch)
    crop = crop.resize((max(1, int(cw * scale)), max(1, int(ch * scale))), Image.Resampling.BICUBIC)
    name = f"img{i:05d}.jpg" if i % 3 else f"img{i:05d}.png"
    crop.save(d / name, quality=90) if name.endswith(".jpg") else crop.save(d / name)
    return name


def make_images(d: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct real photos (crops of scikit-image samples, 256-640 px), 2/3 JPEG, 1/3 PNG."""
    d.mkdir(parents=True, exist_ok=True)
    jobs = [(d, i, seed) for i in range(n)]
    if n <= 500:
        return [_make_one(j) for j in jobs]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=os.cpu_count()) as ex:
        return list(ex.map(_make_one, jobs, chunksize=32))


def write_pool(root: Path, names: list[str]) -> Path:
    p = root / "pool.jsonl"
    p.write_text("".join(json.dumps({"id": f"r{i}", "image": f"imgs/{n}", "task": "t"}) + "\n"
                         for i, n in enumerate(names)))
    return p


def model_only(spec, paths: list[Path], batch_size: int, repeats: int = 1) -> float:
    """images/s of backend.embed over pre-decoded uint8 batches (after one warm-up batch)."""
    import torch

    from presel.features.backends import load_backend
    from presel.features.images import load_rgb

    backend = load_backend(spec)
    pre = backend.preprocess
    arrs = np.stack([pre(load_rgb(p)) for p in paths])
    batches = [torch.from_numpy(arrs[i:i + batch_size]) for i in range(0, len(arrs), batch_size)]
    if spec.device.startswith("cuda"):
        batches = [b.pin_memory() for b in batches]
    backend.embed(batches[0])
    sync = torch.cuda.synchronize if spec.device.startswith("cuda") else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(repeats):
        for b in batches:
            backend.embed(b)
    sync()
    return repeats * len(arrs) / (time.perf_counter() - t)


def dinov2_flops_per_image(hidden: int, layers: int, tokens: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs of a ViT encoder (matmuls only; 2 FLOPs per MAC)."""
    per_layer = tokens * (2 * 4 * hidden * hidden + 2 * 2 * mlp_ratio * hidden * hidden) + 2 * 2 * tokens * tokens * hidden
    return layers * per_layer


def build_base_shaped(d: Path) -> Path:
    """A DINOv2-base-shaped model (random weights: compute is what matters here) + DINOv2 processor config."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    from presel.features.offline import PREPROCESSOR_CONFIG
    from presel.io.atomic import dumps_json

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14,
                             image_size=518, layerscale_value=1.0)).save_pretrained(d)
    (d / "preprocessor_config.json").write_text(dumps_json(PREPROCESSOR_CONFIG))
    return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="images (default 300 on CPU, 16384 on CUDA)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="default: dinov2-small on CPU, a DINOv2-base-shaped model on CUDA")
    ap.add_argument("--image-size", type=int, default=None, help="default: 224")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 32 on CPU, 256 on CUDA")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    ap.add_argument("--rounds", type=int, default=3, help="alternating model-only / pipeline measurements")
    ap.add_argument("--workdir", default=None, help="keep images here (default: a temp dir)")
    args = ap.parse_args(argv)

    from threadpoolctl import threadpool_info

    from presel.features.extract import EmbedConfig, embed_pool, resolve_spec
    from presel.io.manifest import read_pool

    cuda = args.device.startswith("cuda")
    bs = args.batch_size or (256 if cuda else 32)
    n = args.n if args.n else (16384 if cuda else 300)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="embed_bench_"))
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()} (shared machine: other jobs may run)")
    import torch

    print(f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    for info in threadpool_info():
        print(f"  BLAS/OpenMP: {info.get('internal_api')} {info.get('version')} threads={info.get('num_threads')} "
              f"({Path(info.get('filepath', '')).name})")
    t = time.perf_counter()
    names = sorted(p.name for p in (work / "imgs").glob("img*")) if (work / "imgs").is_dir() else []
    if len(names) < n:
        names = make_images(work / "imgs", n)
    names = names[:n]
    paths = [work / "imgs" / x for x in names]
    mb = sum(p.stat().st_size for p in paths) / 2**20
    print(f"images: {n} real photos (scikit-image, cropped/resized 256-640 px, JPEG+PNG, {mb:.1f} MB) "
          f"in {work} ({time.perf_counter() - t:.1f} s to prepare)")

    model = args.model
    if model is None:
        model = str(build_base_shaped(work / "dinov2-base-shaped")) if cuda else "dinov2-small"
    cfg = EmbedConfig(model=model, batch_size=bs, workers=args.workers, image_size=args.image_size or 224,
                      device=args.device, dtype=args.dtype, progress=False, shard_size=4096)
    spec = resolve_spec(cfg)
    print(f"model: {model} ({spec.model}), device {spec.device}, dtype {spec.dtype}, batch {bs}, "
          f"{cfg.image_size} px, {args.workers} decode workers")

    pool = read_pool(write_pool(work, names))
    out = work / "feats"
    import shutil

    # the machine is shared: alternate the two measurements and report medians
    mos, pipes, steady = [], [], []
    for r in range(args.rounds):
        if r % 2:  # alternate the order so a load change on the shared machine does not favour one side
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            st = embed_pool(pool, out, cfg)
            wall = time.perf_counter() - t
            mo = model_only(spec, paths, bs)
        else:
            mo = model_only(spec, paths, bs)
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            st = embed_pool(pool, out, cfg)
            wall = time.perf_counter() - t
        pipe = st["embedded_now"] / wall
        mos.append(mo)
        pipes.append(pipe)
        steady.append(st["extract_images_per_s"])
        print(f"round {r + 1}: model only {mo:6.1f} images/s | whole pipeline {pipe:6.1f} images/s "
              f"({st['embedded_now']} images, {wall:.1f} s incl. model load {st['model_load_s']:.1f} s, hashing, "
              f"store; {st['extract_images_per_s']:.1f} images/s once the model is loaded) | ratio {pipe / mo:.2f} "
              f"| load {os.getloadavg()[0]:.2f}")
    mo, pipe = float(np.median(mos)), float(np.median(pipes))
    print(f"model only (pre-decoded uint8 batches), median: {mo:8.1f} images/s")
    print(f"whole pipeline (embed_pool end to end), median: {pipe:8.1f} images/s")
    print(f"pipeline once the model is loaded, median: {float(np.median(steady)):8.1f} images/s")
    print(f"ratio pipeline / model-only: {pipe / mo:.2f} (median of per-round ratios "
          f"{float(np.median(np.asarray(pipes) / np.asarray(mos))):.2f}; target >= 0.8)")
    if cuda:
        pc = spec.image_size or 224
        tokens = 1 + (pc // 14) ** 2
        flops = dinov2_flops_per_image(768, 12, tokens)
        bound = args.peak_tflops * 1e12 / flops
        print(f"compute bound: {flops / 1e9:.1f} GFLOP/image -> {bound:,.0f} images/s at {args.peak_tflops} TFLOP/s; "
              f"model-only reaches {mo / bound:.1%}, pipeline {pipe / bound:.1%} (target pipeline >= 2,000 images/s)")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
