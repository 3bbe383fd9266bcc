"""``presel dedup``: groups of near-duplicate images from their features, and a keep-list for ``select``."""

from __future__ import annotations

import argparse

HELP = "group near-duplicate images (cosine similarity of their features) and write a keep-list"
DESCRIPTION = (HELP + ". Writes OUT/groups.parquet (group, key, keep, size, sim_to_kept, tasks), OUT/pairs.parquet, "
               "OUT/keep.txt (image keys to keep) and OUT/summary.json; `presel select --dedup OUT` keeps one image "
               "per group before clustering.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from presel.commands._common import add_out_arguments, add_pool_arguments

    p.add_argument("--features", required=True, help="feature store written by `presel embed` (or .npy/.parquet)")
    p.add_argument("--feature-ids", default=None, help="ids of the .npy rows, one per line")
    add_pool_arguments(p, required=False)
    g = p.add_argument_group("near-duplicates")
    g.add_argument("--threshold", type=float, default=0.95, help="cosine similarity at or above which images group")
    g.add_argument("--scope", choices=("all", "task"), default="all",
                   help="all: across tasks; task: only images of the same task (needs --pool)")
    g.add_argument("--nprobe", type=int, default=4, help="IVF cells probed per query (large inputs)")
    g.add_argument("--exact-max", type=int, default=20_000, help="exact search up to this many images")
    g.add_argument("--threads", type=int, default=None, help="faiss threads (default: all cores)")
    add_out_arguments(p)


def run(args: argparse.Namespace) -> int:
    from presel.commands._common import load_pool
    from presel.io.features import load_features
    from presel.selection.neardup import DedupConfig, dedup_to_dir

    cfg = DedupConfig(threshold=args.threshold, scope=args.scope, nprobe=args.nprobe, exact_max=args.exact_max,
                      threads=args.threads)
    pool = load_pool(args) if args.pool else None
    features = load_features(args.features, args.feature_ids)
    s = dedup_to_dir(features, args.out, cfg, pool=pool, overwrite=args.overwrite)
    print(f"{s['images']} images: {s['pairs']} near-duplicate pairs (cosine >= {s['threshold']}), {s['groups']} "
          f"groups, {s['images_in_groups']} images in groups (largest {s['largest_group']}); keep {s['kept']}, "
          f"drop {s['dropped']}")
    print(f"wrote {args.out}")
    return 0
