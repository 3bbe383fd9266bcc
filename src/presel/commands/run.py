"""``presel run config.yaml``: every stage in order, each skipped when its output for the same inputs exists."""

from __future__ import annotations

import argparse

HELP = "run every stage of a YAML config in order (cached per stage); --dry-run prints the plan and estimates"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML run config (see docs/architecture.md and presel.pipeline for its sections)")
    p.add_argument("--out", default=None, help="run directory (overrides the config's 'out')")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="rerun this stage even if its output is up to date (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config; print each stage as up to date / will run / will rerun (and why), "
                        "sizes, estimated GPU-hours and instruction cost; run nothing")
    p.add_argument("--throughputs", default=None, metavar="FILE",
                   help="with --dry-run: measured throughputs (JSON, e.g. the throughputs.json of "
                        "scripts/gpu-check.sh); they override the config's 'estimate' section")


def status_lines(rows: list[tuple[str, str, list[str]]]) -> list[str]:
    lines = ["stages:"]
    for name, state, why in rows:
        lines.append(f"  {name:12s} {state}" + (f": {'; '.join(why)}" if why else ""))
    return lines


def run(args: argparse.Namespace) -> int:
    from presel.errors import PreselError
    from presel.pipeline import STAGES, Pipeline, RunConfig

    cfg = RunConfig.load(args.config, out=args.out)
    bad = [s for s in args.force if s not in STAGES]
    if bad:
        raise PreselError(f"--force {bad[0]}: unknown stage; stages are {', '.join(STAGES)}")
    if args.throughputs and not args.dry_run:
        raise PreselError("--throughputs is used by --dry-run only; add --dry-run")
    pipe = Pipeline(cfg, force=tuple(args.force))
    if args.dry_run:
        from presel.estimate import dry_run, read_throughputs

        throughputs = read_throughputs(args.throughputs) if args.throughputs else None
        rows = pipe.status()
        print("\n".join(status_lines(rows)))
        print()
        print(dry_run(cfg, throughputs))
        return 0
    timings = pipe.run()
    if pipe.waiting:
        print(f"run paused at {pipe.waiting}")
        return 0
    total = sum(timings.values())
    print(f"run finished: {cfg.out}  (stage time {total:.0f} s; timings in {cfg.out / 'timings.json'})")
    return 0
