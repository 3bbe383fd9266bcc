"""Exact and near duplicates in selection.

*Exact duplicates*: records whose images have the same content hash (from the feature store's index) are
one distinct image whatever their paths: :func:`content_keys` maps every record to the image key of the
first record (pool order) with that content, so the image is one item, counted once in the budget and
picked at most once (per task with ``allow_repeats``).

*Near duplicates*: :func:`apply_dedup` drops the records whose image is not on the keep-list written by
``presel dedup`` (all but one image per group of near-copies), before clustering.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from presel.errors import PreselError
from presel.records import Pool


def content_keys(pool: Pool, features: Any) -> tuple[list[str], int]:
    """Per record, the image key standing for its content, and how many distinct image keys were folded
    into another key with the same bytes. Without content hashes (plain .npy / Parquet features) the image
    keys themselves."""
    keys = pool.image_keys()
    hashes = getattr(features, "content_hashes", None)
    if not hashes:
        return keys, 0
    first: dict[str, str] = {}
    out = []
    for k in keys:
        h = hashes.get(k)
        out.append(k if h is None else first.setdefault(h, k))
    return out, len(set(keys)) - len(set(out))


def read_keep_list(dedup_dir: str | os.PathLike) -> tuple[set[str], set[str]]:
    """``(keep, grouped)`` image keys from a ``presel dedup`` output folder: every key that is in a group, and
    those of them to keep (one per group)."""
    import pyarrow.parquet as pq

    d = Path(dedup_dir)
    groups = d / "groups.parquet"
    if not groups.is_file():
        raise PreselError(f"--dedup {d}: no groups.parquet; pass the --out folder of `presel dedup`")
    t = pq.read_table(groups, columns=["key", "keep"])
    keys = t.column("key").to_pylist()
    keep = t.column("keep").to_pylist()
    return {k for k, x in zip(keys, keep) if x}, set(keys)


def apply_dedup(pool: Pool, dedup_dir: str | os.PathLike) -> tuple[Pool, dict[str, int]]:
    """``pool`` without the records whose image is a near-copy that the keep-list drops."""
    keep, grouped = read_keep_list(dedup_dir)
    drop = grouped - keep
    kept = [r for r in pool.records if r.image_key not in drop]
    if not kept:
        raise PreselError(f"--dedup {dedup_dir}: every pool record would be dropped; is it the dedup output of "
                          "these features?")
    stats = {"near_duplicate_images_dropped": len({r.image_key for r in pool.records} & drop),
             "near_duplicate_records_dropped": len(pool.records) - len(kept)}
    return Pool(kept, pool.source, pool.image_root, text_only=pool.text_only, format=pool.format), stats
