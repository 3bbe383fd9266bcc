"""``presel map RUN``: an offline, interactive map of the run's pool (RUN/map/index.html)."""

from __future__ import annotations

import argparse

HELP = "write an interactive, offline map of a run's pool: every image a point, coloured by task / cluster / pick"
DESCRIPTION = (HELP + ". The 2-D projection (UMAP of the features) is cached in the run and resumes; the page "
               "(RUN/map/index.html, assets/ beside it) needs no network. A box or lasso selection exports an id "
               "list for `presel select --exclude/--include`.")

HELPS = {
    "method": "umap (umap-learn, the pip extra 'map') or pca (first two principal components)",
    "n_neighbors": "UMAP neighbours",
    "min_dist": "UMAP minimum distance",
    "pca_dims": "principal components kept before UMAP",
    "fit_sample": "UMAP is fitted on at most this many points (seeded sample); the others are transformed",
    "chunk": "points transformed (and cached) per step",
    "seed": "seed of every random choice",
    "thumb_size": "thumbnail size in pixels (0: no thumbnails)",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from presel.config import add_config_arguments
    from presel.map.project import METHODS, MapConfig

    p.add_argument("run_dir", help="run directory written by presel run / presel demo (or holding selection/)")
    p.add_argument("--out", default=None, help="folder of the map (default: RUN_DIR/map)")
    p.add_argument("--features", default=None,
                   help="features to project (default: RUN_DIR/features, else the file the selection read)")
    p.add_argument("--feature-ids", default=None, help="ids of the rows of a .npy --features")
    p.add_argument("--image-root", default=None, help="folder the image paths are relative to, if it moved")
    p.add_argument("--title", default=None, help="title of the page (default: the run directory's name)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars")
    add_config_arguments(p.add_argument_group("projection"), MapConfig, helps=HELPS, choices={"method": METHODS})


def run(args: argparse.Namespace) -> int:
    from presel.config import config_from_args
    from presel.map import MapConfig, build_map

    cfg = config_from_args(MapConfig, args)
    index = build_map(args.run_dir, cfg, out=args.out, features=args.features, feature_ids=args.feature_ids,
                      image_root=args.image_root, title=args.title, progress=args.progress)
    print(index)
    return 0
