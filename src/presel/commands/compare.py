"""``presel compare CONFIG``: arms x seeds of selection + fine-tuning + held-out evaluation (presel.compare)."""

from __future__ import annotations

import argparse

HELP = ("does a selection train a better VLM? fine-tune and evaluate PreSel, other rules, random, TypiClust and full "
        "data over paired seeds; table with 95%% intervals and paired differences")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML compare config: run (a run config), heldout, full, model, budget, seeds, "
                                  "arms, finetune, evaluate (see presel.compare)")
    p.add_argument("--table", action="store_true",
                   help="print the table of the models evaluated so far (while a run goes on); run nothing")


def run(args: argparse.Namespace) -> int:
    from presel.compare import (
        compare_cells,
        compare_table,
        finished_results,
        load_compare_config,
        run_compare,
    )

    cc, base = load_compare_config(args.config)
    if args.table:
        found = finished_results(cc, base)
        print(f"{len(found)} of {len(cc.model_names())} models evaluated so far: {', '.join(found) or 'none'}")
        if found:
            print(compare_table(compare_cells(found, cc)))
        return 0
    doc = run_compare(cc, base)
    print(f"compare finished: {len(doc['models'])} models; evaluation.json and table.md in the compare folder")
    return 0
