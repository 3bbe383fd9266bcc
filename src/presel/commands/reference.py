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
    from presel.config import add_config_arguments
    from presel.importance.reference import ReferenceConfig
    from presel.protocol import add_protocol_argument

    g = p.add_argument_group("reference set (the keys of a run's reference section)")
    add_config_arguments(g, ReferenceConfig, skip=("protocol",), helps={
        "fraction": "share of the distinct pool images (official: of each task's records), floored",
        "min_per_task": "at least this many images per task", "seed": "sampling seed"})

    add_protocol_argument(g)
    add_out_arguments(p)


def run(args: argparse.Namespace) -> int:
    from presel.commands._common import load_pool
    from presel.config import config_from_args
    from presel.importance.reference import ReferenceConfig, reference_to_dir

    rc = config_from_args(ReferenceConfig, args)  # validate before reading
    pool = load_pool(args)
    s = reference_to_dir(pool, args.out, fraction=rc.fraction, seed=rc.seed, min_per_task=rc.min_per_task,
                         overwrite=args.overwrite, protocol=rc.protocol, from_file=rc.from_file)
    width = max([4] + [len(t) for t in s["tasks"]])
    print(f"{'task':<{width}}  images  reference")
    for t, v in s["tasks"].items():
        print(f"{t:<{width}}  {v['images']:>6}  {v['reference']:>9}")
    print(f"{'total':<{width}}  {s['total']['images']:>6}  {s['total']['reference']:>9}")
    print(f"wrote {args.out}")
    return 0
