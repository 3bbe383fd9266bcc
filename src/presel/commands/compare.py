"""``presel compare CONFIG``: arms x seeds of selection + fine-tuning + held-out evaluation (presel.compare)."""

from __future__ import annotations

import argparse

HELP = ("does a selection train a better VLM? fine-tune and evaluate PreSel, other rules, random, TypiClust and full "
        "data over paired seeds; table with 95%% intervals and paired differences")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML compare config: run (a run config), heldout, full, model, budget, seeds, "
                                  "arms, finetune, evaluate (see presel.compare)")


def run(args: argparse.Namespace) -> int:
    from presel.compare import load_compare_config, run_compare

    cc, base = load_compare_config(args.config)
    doc = run_compare(cc, base)
    print(f"compare finished: {len(doc['models'])} models; evaluation.json and table.md in the compare folder")
    return 0
