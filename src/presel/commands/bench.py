"""``presel bench quality``: the within-task selection-quality benchmark (benchmarks/quality.py)."""

from __future__ import annotations

import argparse

HELP = "benchmarks: `presel bench quality` measures within-task selection quality against random and TypiClust"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from presel.bench.runner import add_arguments as quality_arguments

    sub = p.add_subparsers(dest="bench", metavar="<benchmark>", required=True)
    q = sub.add_parser("quality", help="held-out accuracy of classifiers trained on each method's selection "
                                       "(JSON, CSV and plots into RUN/bench/ or --out)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    quality_arguments(q)


def run(args: argparse.Namespace) -> int:
    from presel.bench.runner import main

    return main(args)
