"""presel reference: the reference set to annotate first (PreSel step 1.1)."""

from __future__ import annotations

import argparse

HELP = ("sample the reference set: a seeded random fraction of the distinct pool images stratified by task "
        "(--protocol official: of each task's records), at least 1 per task")
DESCRIPTION = (HELP + ". Writes reference.jsonl (id, image, task: the images to annotate; pass it to "
               "`presel select --reference`), reference_llava.json (a LLaVA skeleton to fill with instructions), "
               "summary.json and config.json to --out.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from presel.commands._common import add_out_arguments, add_pool_arguments

    add_pool_arguments(p)
    g = p.add_argument_group("reference set")
    g.add_argument("--fraction", type=float, default=0.05, help="share of the distinct pool images (official: of each task's records), floored")
    g.add_argument("--min-per-task", type=int, default=1, help="at least this many images per task")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--from-file", default=None, metavar="FILE",
                   help="take the authors' released split instead of drawing one: a JSON list of records with "
                        "unique_idx (round1_665k_notext.json; unique_idx = index in "
                        "llava_v1_5_mix665k_notext_add_idx.json) over a `presel prepare llava665k` pool")
    from presel.protocol import add_protocol_argument

    add_protocol_argument(g)
    add_out_arguments(p)


def run(args: argparse.Namespace) -> int:
    from presel.commands._common import load_pool
    from presel.importance.reference import ReferenceConfig, reference_to_dir

    ReferenceConfig(fraction=args.fraction, seed=args.seed, min_per_task=args.min_per_task,
                    protocol=args.protocol)  # validate before reading
    pool = load_pool(args)
    s = reference_to_dir(pool, args.out, fraction=args.fraction, seed=args.seed, min_per_task=args.min_per_task,
                         overwrite=args.overwrite, protocol=args.protocol, from_file=args.from_file)
    width = max([4] + [len(t) for t in s["tasks"]])
    print(f"{'task':<{width}}  images  reference")
    for t, v in s["tasks"].items():
        print(f"{t:<{width}}  {v['images']:>6}  {v['reference']:>9}")
    print(f"{'total':<{width}}  {s['total']['images']:>6}  {s['total']['reference']:>9}")
    print(f"wrote {args.out}")
    return 0
