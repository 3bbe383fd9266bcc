"""Never write where we read: an output path must not equal, lie inside or contain any input of the same call.

``presel select --features feats --out feats --overwrite`` would otherwise replace the feature store it is
reading. :func:`check_apart` is the one check; :func:`check_args` applies it to a command's parsed flags (the
CLI calls it before any command runs), and ``presel run`` applies it to its stage folders and input files.
Paths are compared after resolving symbolic links, so a link to an input is the input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from presel.errors import PreselError
from presel.io.text import cut

# flags (argparse dests) that name something a command reads. "tree": nothing may be written at, inside or
# around it; "root": a folder the command may write inside (an image root, a run folder a report is written
# into) but must not replace; "same": only the path itself is off limits (batch result files may sit in the
# generation folder that --collect adds to: it never deletes there).
INPUT_FLAGS: dict[str, str] = {
    "pool": "tree", "features": "tree", "feature_ids": "tree", "weights": "tree", "reference": "tree",
    "dedup": "tree", "task_map": "tree", "task_rule": "tree", "selection": "tree", "reference_annotations": "tree",
    "templates": "tree", "from_annotations": "tree", "collect": "same", "data": "tree", "model": "tree",
    "annotations": "tree", "splits": "tree", "tasks_config": "tree", "train": "tree", "throughputs": "tree",
    "config": "tree", "irs": "tree", "exclude": "tree", "include": "tree", "reference_split": "tree", "from_file": "tree",
    "image_root": "root", "run_dir": "root",
}
# flags that name what a command writes
OUTPUT_FLAGS: tuple[str, ...] = ("out", "screenshot")


def _flag(dest: str) -> str:
    return dest if dest.startswith(("-", "<")) or "/" in dest or " " in dest else "--" + dest.replace("_", "-")


def _local(value: Any) -> list[Path]:
    """The local paths a flag's value names (strings or lists of them; URLs and hub ids are not local)."""
    if value is None or isinstance(value, bool | int | float):
        return []
    if isinstance(value, str | os.PathLike):
        s = os.fspath(value)
        if not s or "://" in s or s.startswith("hf:") or "\0" in s:
            return []
        return [Path(s)]
    if isinstance(value, Iterable) and not isinstance(value, bytes | Mapping):
        return [p for v in value for p in _local(v)]
    return []


def _real(p: Path) -> Path:
    try:
        return Path(os.path.realpath(p))
    except (OSError, ValueError):
        return Path(os.path.abspath(p))


def _inside(a: Path, b: Path) -> bool:
    """``a`` lies strictly inside ``b``."""
    return a != b and b in a.parents


def overlap(out: Path, src: Path, mode: str = "tree") -> str | None:
    """How ``out`` overlaps the existing input ``src`` ('is', 'is inside', 'contains'), or None."""
    o, s = _real(out), _real(src)
    if o == s:
        return "is"
    if mode == "same":
        return None
    if _inside(s, o):
        return "contains"
    if mode == "tree" and _inside(o, s) and s.is_dir():
        return "is inside"
    return None


def check_apart(outputs: Mapping[str, Any], inputs: Mapping[str, Any],
                modes: Mapping[str, str] | None = None) -> None:
    """Raise PreselError when an output equals, lies inside or contains an existing input.

    ``outputs`` and ``inputs`` map a name (a flag such as ``--out``, or a config key) to a path, a list of
    paths or None. Inputs that do not exist (offline model names, URLs) are skipped: nothing there can be lost.
    """
    modes = modes or {}
    for oname, oval in outputs.items():
        for out in _local(oval):
            for iname, ival in inputs.items():
                for src in _local(ival):
                    if not os.path.lexists(src):
                        continue
                    how = overlap(out, src, modes.get(iname, "tree"))
                    if how is None:
                        continue
                    raise PreselError(
                        f"{oname} {_cut(out)} {how} {'the' if how == 'is' else 'the input'} {iname} {_cut(src)}: "
                        "presel would delete or overwrite what it reads in the same call; choose an output "
                        f"outside every input (nothing was changed)")


def check_args(args: Any) -> None:
    """Apply :func:`check_apart` to a parsed command line (argparse Namespace)."""
    ns = vars(args)
    if ns.get("command") == "run":  # a run folder holds its config and inputs; the runner checks each stage folder
        return
    outputs = {_flag(d): ns.get(d) for d in OUTPUT_FLAGS if ns.get(d) is not None}
    if not outputs:
        return
    inputs = {_flag(d): ns.get(d) for d in INPUT_FLAGS if ns.get(d) is not None}
    modes = {_flag(d): m for d, m in INPUT_FLAGS.items()}
    if "run_dir" in ns:
        inputs["RUN_DIR"] = inputs.pop("--run-dir", None)
        modes["RUN_DIR"] = "root"
    if "config" in ns:
        inputs["CONFIG"] = inputs.pop("--config", None)
    check_apart(outputs, inputs, modes)


def _cut(p: Any) -> str:
    return cut(str(p))
