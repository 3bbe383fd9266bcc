"""``presel export --to fiftyone RUN``: a run's pool, selection and map projection as a FiftyOne dataset."""

from __future__ import annotations

import argparse

HELP = "load a run into another tool: --to fiftyone (a FiftyOne dataset with the selection and the map's projection)"
DESCRIPTION = (HELP + ". Fields: task, cluster, rank, selected, reference, status, weight, centrality, duplicate_group, "
               "the features as 'embedding'; the 2-D projection of `presel map` as the brain visualization "
               "'presel_map'. Needs the optional extra: pip install 'presel[fiftyone]'.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run directory written by presel run / presel demo (or holding selection/)")
    p.add_argument("--to", required=True, choices=["fiftyone"], help="target tool")
    p.add_argument("--name", default=None, help="dataset name (default: the run directory's name)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset of that name")
    p.add_argument("--persistent", action="store_true", help="keep the dataset in FiftyOne's database after exit")
    p.add_argument("--features", default=None, help="features (default: RUN_DIR/features, else the selection's)")
    p.add_argument("--feature-ids", default=None, help="ids of the rows of a .npy --features")
    p.add_argument("--image-root", default=None, help="folder the image paths are relative to, if it moved")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars")


def run(args: argparse.Namespace) -> int:
    from presel.map.fiftyone import export_fiftyone

    ds = export_fiftyone(args.run_dir, args.name, overwrite=args.overwrite, persistent=args.persistent,
                         features=args.features, feature_ids=args.feature_ids, image_root=args.image_root,
                         progress=args.progress)
    print(f"FiftyOne dataset '{ds.name}': {len(ds)} samples, visualization 'presel_map'"
          f"{'' if args.persistent else ' (not persistent: open it in this session, or pass --persistent)'}")
    return 0
