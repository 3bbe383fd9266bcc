"""``presel demo``: the whole pipeline on the embedded offline demo pool."""

from __future__ import annotations

import argparse

HELP = "run the whole pipeline offline on the embedded demo pool (real small models) and write a report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="run directory (reruns skip finished stages)")
    p.add_argument("--size", choices=["default", "small"], default="default",
                   help="default: ~3,000 images, 7 tasks; small: ~300 images for a quick look")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", action="store_true",
                   help="then run `presel compare` on the demo run (compare.yaml): PreSel, the best within-task rule "
                        "with IRS and with size weights, random and TypiClust at 15%% (each over --compare-seeds "
                        "seeds) and 100%%; held-out exact match and answer NLL, mean +- CI, paired differences")
    p.add_argument("--compare-seeds", type=int, default=3, help="seeds per 15%% arm of --compare")


def run(args: argparse.Namespace) -> int:
    from presel.demo.run import run_demo

    if args.compare_seeds < 1:
        from presel.errors import PreselError

        raise PreselError(f"--compare-seeds {args.compare_seeds} must be >= 1 (3 or more for a confidence interval)")
    res = run_demo(args.out, size=args.size, seed=args.seed, compare=args.compare, compare_seeds=args.compare_seeds)
    print(f"demo finished in {res['seconds']:.0f} s; report: {res['report']}")
    return 0
