"""Within-task selection quality: held-out accuracy of classifiers trained on the selected images only.

    PYTHONPATH=src nice -n 10 python benchmarks/quality.py --run runs/demo      # -> runs/demo/bench/quality.*
    PYTHONPATH=src nice -n 10 python benchmarks/quality.py --out runs/bench-quality
    presel bench quality --out runs/bench-quality                                # the same code

Tasks (presel.bench.data): MNIST, Fashion-MNIST, scikit-learn digits, two rendered tasks, and
tasks derived from their cached features (300-500-image pools, a long-tailed class distribution,
planted near-duplicates, labels the features barely carry). Methods through presel select; for
each budget (1, 2, 5, 10, 20, 30% of the task's pool) and seed (10; each draws 90% of the pool):
a linear probe, 1-NN and a small MLP trained on the selected images' DINOv2-S features, scored on
held-out images; mean, 95% CI, and the paired difference to random and to TypiClust with its CI.
Writes quality.json, quality.csv and one plot per classifier.

Features are embedded once (about 10 minutes on 2 idle cores) and cached in $PRESEL_CACHE/bench.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    from presel.bench.runner import add_arguments
    from presel.bench.runner import main as run

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
