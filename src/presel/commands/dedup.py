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
    from presel.config import add_config_arguments
    from presel.selection.neardup import SCOPES, DedupConfig

    add_config_arguments(p.add_argument_group("near-duplicates"), DedupConfig, choices={"scope": SCOPES})
    add_out_arguments(p)


def run(args: argparse.Namespace) -> int:
    from presel.commands._common import load_pool
    from presel.config import config_from_args
    from presel.io.features import load_features
    from presel.selection.neardup import DedupConfig, dedup_to_dir

    cfg = config_from_args(DedupConfig, args)
    pool = load_pool(args) if args.pool else None
    features = load_features(args.features, args.feature_ids)
    s = dedup_to_dir(features, args.out, cfg, pool=pool, overwrite=args.overwrite)
    print(f"{s['images']} images: {s['pairs']} near-duplicate pairs (cosine >= {s['threshold']}), {s['groups']} "
          f"groups, {s['images_in_groups']} images in groups (largest {s['largest_group']}); keep {s['kept']}, "
          f"drop {s['dropped']}")
    print(f"wrote {args.out}")
    return 0
