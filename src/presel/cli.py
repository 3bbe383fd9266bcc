"""``presel <command>``: flags -> config -> library call. No algorithm lives here."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from presel import __version__
from presel.errors import PreselError
from presel.io.text import cut_middle

# command name -> module under presel.commands (one file per command keeps them independent)
COMMANDS: dict[str, str] = {
    "select": "select",
    "dedup": "dedup",
    "embed": "embed",
    "reference": "reference",
    "score": "score",
    "weights": "weights",
    "models": "models",
    "finetune": "finetune",
    "generate": "generate",
    "prepare": "prepare",
    "run": "run",
    "demo": "demo",
    "compare": "compare",
    "report": "report",
    "map": "map",
    "export": "export",
    "evaluate": "evaluate",
    "bench": "bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="presel",
        description="Pre-instruction data selection for visual instruction tuning: pick which images deserve instructions.",
    )
    parser.add_argument("--version", action="version", version=f"presel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, modname in COMMANDS.items():
        try:
            mod = importlib.import_module(f"presel.commands.{modname}")
        except ModuleNotFoundError as e:
            if e.name == f"presel.commands.{modname}":
                continue  # command not built in this version
            raise
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        from presel.io.guard import check_args

        check_args(args)  # never write where this call reads (before anything is deleted)
        return int(args._run(args) or 0)
    except PreselError as e:
        print(f"presel {args.command}: error: {cut_middle(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"presel {args.command}: interrupted; finished work is kept, rerun the same command to resume",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
