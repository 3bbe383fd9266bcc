"""presel select: pick images under an exact budget (PreSel step 2)."""

from __future__ import annotations

import argparse

HELP = "select images: task-wise k-means + neighbour centrality under an exact budget"
DESCRIPTION = ("Select images from a pool with given features and task weights (PreSel step 2). The budget includes "
               "the reference set; the selection size equals it exactly. Writes selection.parquet/.jsonl, "
               "assignments.parquet, summary.json and config.json to --out.")


HELPS = {
    "budget": "fraction of distinct pool images, reference set included (e.g. 0.15); give this or --budget-count",
    "budget_count": "number of images, reference set included",
    "method": "presel: the paper's rule; herding: PreSel's task weights and budgets, each task's quota filled by "
              "kernel coverage over the whole task (TypiClust below 1.5%% of a task); presel-cover: PreSel's clusters "
              "and quotas, facility location inside each cluster",
    "task_weights": "irs: from --weights; uniform; size: proportional to task size",
    "images_per_cluster": "k-means clusters per task = round(task images / this); protocol official: "
                          "max(1, int(0.01 * records))",
    "k": "neighbours for neighbour centrality (protocol official: min(5, cluster size - 1))",
    "kmeans_niter": "faiss k-means iterations (default 25)",
    "kmeans_backend": "faiss: on the GPU when faiss has GPU support and sees a CUDA device, else the CPU; "
                      "faiss-cpu; faiss-gpu: insist on the GPU; sklearn",
    "kmeans": "k-means per task in one level or two (coarse groups, then clusters inside each: cost grows as "
              "n*sqrt(n) instead of n^2); auto: two levels for tasks of 200,000+ images; protocol official: flat",
    "threads": "small tasks (under 20,000 images) scored this many at a time, one core each; 0: one per core",
    "allow_repeats": "an image used by several tasks may be selected once per task",
    "official_quotas": "protocol official: the authors' task-quota rule (vision-flan: their allocate_samples)",
    "exclude": "ids (record ids or image paths, one per line, e.g. a `presel map` lasso export) to leave out of the "
               "pool before selecting",
    "include": "ids to select whatever their rank; they count in the budget (their task's quota first)",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from presel.commands._common import add_out_arguments, add_pool_arguments

    add_pool_arguments(p)
    g = p.add_argument_group("inputs")
    g.add_argument("--features", required=True, help="features: .npy (N x d, with --feature-ids), Parquet (id + vector) or a feature store")
    g.add_argument("--feature-ids", default=None, help="ids of the .npy rows, one per line (record ids or image paths)")
    g.add_argument("--weights", default=None, help="task weights JSON (from `presel weights`); needed for --task-weights irs")
    g.add_argument("--reference", default=None, help="reference set: ids (record ids or image paths), .txt or a manifest with 'id'")
    g.add_argument("--dedup", default=None, metavar="DIR",
                   help="output of `presel dedup`: keep one image per group of near-duplicates before clustering")
    from presel.config import add_config_arguments
    from presel.protocol import add_protocol_argument
    from presel.selection.select import CHOICES, SelectConfig

    g = p.add_argument_group("selection (the keys of a run's select section)")
    add_config_arguments(g, SelectConfig, skip=("protocol",), helps=HELPS,
                         choices=CHOICES)
    add_protocol_argument(g)
    add_out_arguments(p)


def run(args: argparse.Namespace) -> int:
    from presel.commands._common import load_pool
    from presel.config import config_from_args
    from presel.io.features import load_features
    from presel.selection.select import SelectConfig, select_to_dir

    cfg = config_from_args(SelectConfig, args)
    pool = load_pool(args, columnar=cfg.protocol != "official")  # the columnar reader: fast, for paper
    features = load_features(args.features, args.feature_ids)
    summary = select_to_dir(pool, features, args.weights, args.reference, cfg, args.out, overwrite=args.overwrite,
                            dedup=args.dedup)
    print(format_table(summary))
    tot = summary["totals"]
    if tot.get("content_duplicate_images") or tot.get("near_duplicate_images_dropped"):
        print(f"duplicates: {tot.get('content_duplicate_images', 0)} images identical to another (counted once), "
              f"{tot.get('near_duplicate_images_dropped', 0)} near-copies dropped by --dedup")
    for name in ("exclude", "include"):
        if name in summary:
            print(f"--{name} {summary[name]['file']}: {summary[name]['images']} images")
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
