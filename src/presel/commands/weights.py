"""presel weights: task weights from IRS (PreSel step 1.5-1.6)."""

from __future__ import annotations

import argparse

HELP = "task weights: score = mean IRS per task, weight = softmax(-score / tau), tau = 1/sqrt(M) by default"
DESCRIPTION = HELP + ". Writes a JSON file mapping each task to {score, weight, n}; `presel select --weights` reads it."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--irs", required=True, help="output folder of `presel score` (or its irs.parquet)")
    from presel.config import add_config_arguments
    from presel.importance.weights import WeightsConfig

    add_config_arguments(p, WeightsConfig)
    p.add_argument("--out", required=True, help="weights JSON file to write")


def run(args: argparse.Namespace) -> int:
    from presel.config import config_from_args
    from presel.importance.weights import WeightsConfig, compute_weights, write_weights

    w = compute_weights(args.irs, tau=config_from_args(WeightsConfig, args).temperature)
    write_weights(args.out, w)
    width = max([4] + [len(t) for t in w])
    print(f"{'task':<{width}}  {'n':>5}  {'score':>8}  {'weight':>8}")
    for t, v in w.items():
        print(f"{t:<{width}}  {v['n']:>5}  {v['score']:>8.4f}  {v['weight']:>8.4f}")
    print(f"wrote {args.out}")
    return 0
