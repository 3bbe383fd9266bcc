"""presel select: pick images under an exact budget (PreSel step 2)."""

from __future__ import annotations

import argparse

HELP = "select images: task-wise k-means + neighbour centrality under an exact budget"
DESCRIPTION = ("Select images from a pool with given features and task weights (PreSel step 2). The budget includes "
               "the reference set; the selection size equals it exactly. Writes selection.parquet/.jsonl, "
               "assignments.parquet, summary.json and config.json to --out.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from presel.commands._common import add_out_arguments, add_pool_arguments

    add_pool_arguments(p)
    g = p.add_argument_group("inputs")
    g.add_argument("--features", required=True, help="features: .npy (N x d, with --feature-ids), Parquet (id + vector) or a feature store")
    g.add_argument("--feature-ids", default=None, help="ids of the .npy rows, one per line (record ids or image paths)")
    g.add_argument("--weights", default=None, help="task weights JSON (from `presel weights`); needed for --task-weights irs")
    g.add_argument("--reference", default=None, help="reference set: ids (record ids or image paths), .txt or a manifest with 'id'")
    g = p.add_argument_group("selection")
    b = g.add_mutually_exclusive_group(required=True)
    b.add_argument("--budget", type=float, default=None, help="fraction of distinct pool images, reference set included (e.g. 0.15)")
    b.add_argument("--budget-count", type=int, default=None, help="number of images, reference set included")
    g.add_argument("--method", default="presel", choices=["presel", "presel-cover", "random", "random-cluster", "typiclust"],
                   help="presel: the paper's rule; presel-cover: PreSel's task weights, clusters and quotas, images "
                        "picked inside each cluster by facility location (representative and covering, no near-copies)")
    g.add_argument("--task-weights", default="irs", choices=["irs", "uniform", "size"],
                   help="irs: from --weights; uniform; size: proportional to task size")
    g.add_argument("--images-per-cluster", type=int, default=100, help="k-means clusters per task = round(task images / this); protocol official: max(1, int(0.01 * records))")
    g.add_argument("--k", type=int, default=5, help="neighbours for neighbour centrality (protocol official: min(5, cluster size - 1))")
    g.add_argument("--kmeans-backend", default="faiss", choices=["faiss", "faiss-cpu", "faiss-gpu", "sklearn"],
                   help="faiss: on the GPU when faiss has GPU support and sees a CUDA device, else the CPU; "
                        "faiss-gpu: insist on the GPU")
    g.add_argument("--kmeans", default="auto", choices=["flat", "hierarchical", "auto"],
                   help="k-means per task in one level or two (coarse groups, then clusters inside each: cost grows as "
                        "n*sqrt(n) instead of n^2); auto: two levels for tasks of 200,000+ images; protocol official: flat")
    g.add_argument("--workers", type=int, default=0,
                   help="small tasks (under 20,000 images) scored this many at a time, one core each; 0: one per core")
    g.add_argument("--kmeans-niter", type=int, default=None, help="faiss k-means iterations (default 25)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--allow-repeats", action="store_true", help="an image used by several tasks may be selected once per task")
    g.add_argument("--dedup", default=None, metavar="DIR",
                   help="output of `presel dedup`: keep one image per group of near-duplicates before clustering")
    from presel.protocol import add_protocol_argument

    add_protocol_argument(g)
    add_out_arguments(p)


def run(args: argparse.Namespace) -> int:
    from presel.commands._common import load_pool
    from presel.io.features import load_features
    from presel.selection.select import SelectConfig, select_to_dir

    cfg = SelectConfig(budget=args.budget, budget_count=args.budget_count, images_per_cluster=args.images_per_cluster,
                       k=args.k, method=args.method, task_weights=args.task_weights, kmeans_backend=args.kmeans_backend,
                       kmeans_niter=args.kmeans_niter, seed=args.seed, allow_repeats=args.allow_repeats,
                       protocol=args.protocol, kmeans=args.kmeans, workers=args.workers)
    pool = load_pool(args, columnar=cfg.protocol != "official")
    features = load_features(args.features, args.feature_ids)
    summary = select_to_dir(pool, features, args.weights, args.reference, cfg, args.out, overwrite=args.overwrite,
                            dedup=args.dedup)
    print(format_table(summary))
    tot = summary["totals"]
    if tot.get("content_duplicate_images") or tot.get("near_duplicate_images_dropped"):
        print(f"duplicates: {tot.get('content_duplicate_images', 0)} images identical to another (counted once), "
              f"{tot.get('near_duplicate_images_dropped', 0)} near-copies dropped by --dedup")
    print(f"wrote {args.out}")
    return 0


def format_table(summary: dict) -> str:
    head = ("task", "images", "ref", "clusters", "weight", "quota", "selected")
    rows = [(name, str(t["images"]), str(t["reference"]), str(t["clusters"]), f"{t['weight']:.4f}", str(t["quota"]),
             str(t["selected"])) for name, t in summary["tasks"].items()]
    tot = summary["totals"]
    rows.append(("total", str(tot["distinct_images"]), str(tot["reference"]),
                 str(sum(t["clusters"] for t in summary["tasks"].values())), "1.0000", str(tot["new_budget"]),
                 str(tot["selected"])))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, "  ".join("-" * w for w in widths))
    unit = tot.get("unit", "images")
    lines.append(f"budget {tot['budget']} {unit} = {tot['reference']} reference + {tot['selected']} selected "
                 f"({summary['method']}, task weights {summary['task_weights']}"
                 f"{', protocol official' if summary.get('protocol') == 'official' else ''})")
    return "\n".join(lines)
