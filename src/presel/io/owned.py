"""May presel delete this? One answer for every place that removes a folder.

presel deletes only what it can prove it wrote: a folder holding one of presel's own records (the
``config.json`` every stage writes, a feature store's ``identity.json``, a run stage's
``.presel-stage.json``, ...), or one the caller proves it started writing itself (a run's pending
record). Anything else is the user's, and the command stops with an error naming the folder.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from presel.errors import PreselError

# file name -> test on its parsed JSON: a folder holding one of these is presel's
_PROOFS: dict[str, Any] = {
    ".presel-stage.json": lambda d: "key" in d and "stage" in d,            # a `presel run` stage
    "config.json": lambda d: "stage" in d and "environment" in d,          # every stage output (resolved_config)
    "presel_config.json": lambda d: "stage" in d and "environment" in d,   # fine-tuned model folders
    "identity.json": lambda d: d.get("format") == "presel-feature-store",  # feature stores
    "manifest.json": lambda d: d.get("format") == "presel-feature-store",  # a finished store whose identity broke
    "score_state.json": lambda d: "data_sha256" in d and "model" in d,     # IRS scoring in progress
    "presel_source.json": lambda d: "model" in d,                          # offline models built by presel
    "fingerprint.json": lambda d: "data_digest" in d and "model" in d,     # a fine-tune's work folder
}


def _proof(path: Path, only: Iterable[str] | None = None) -> str | None:
    for name, test in _PROOFS.items():
        if only is not None and name not in only:
            continue
        f = path / name
        if f.is_file() and not f.is_symlink():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(data, dict) and test(data):
                return name
    return None


def written_by_presel(path: str | os.PathLike) -> bool:
    """True when ``path`` is a real folder (not a link) holding one of presel's own records."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and _proof(path) is not None


def check_deletable(path: str | os.PathLike, *, started: bool = False, only: Iterable[str] | None = None,
                    what: str = "--out", fix: str = "move it away or choose another --out",
                    linked_proof: bool = False, evidence: str = "") -> None:
    """Raise PreselError unless presel may delete ``path``. The one rule (every command and ``presel run``):

    * nothing there, or an empty real folder: yes;
    * a real folder holding one of presel's records (of the names in ``only`` when given; markers of older presel
      versions count, see ``_PROOFS``), or ``started`` (the caller's own record, such as a run's pending record,
      proves presel began writing it): yes;
    * a file, or a link: no, whatever record names the place: presel writes only real folders there, so a
      file or link is the user's. Only with ``linked_proof`` (a run's stage folder the user linked elsewhere) is a
      link to a folder holding presel's record accepted; the link alone is removed then, never its target;
    * anything else: no.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() and linked_proof and path.is_dir() and _proof(path, only) is not None:
        return
    if path.is_symlink() or not path.is_dir():
        raise PreselError(f"{what} {path} is {'a link' if path.is_symlink() else 'a file'}, not a folder presel "
                          f"wrote; presel deletes only what it wrote: {fix}")
    if started or _proof(path, only) is not None or not any(path.iterdir()):
        return
    raise PreselError(f"{what} {path} exists and was not written by presel ("
                      f"{evidence or 'no presel record such as config.json or .presel-stage.json in it'}); "
                      f"presel deletes only what it wrote: {fix}")


def remove_owned(path: str | os.PathLike, *, started: bool = False, only: Iterable[str] | None = None,
                 keep: Iterable[str] = (), what: str = "--out", fix: str = "move it away or choose another --out") -> None:
    """Delete ``path`` (or, with ``keep``, everything in it except those names) after :func:`check_deletable`."""
    path = Path(path)
    check_deletable(path, started=started, only=only, what=what, fix=fix)
    if not path.exists():
        return
    keep = set(keep)
    if not keep:
        shutil.rmtree(path)
        return
    for p in path.iterdir():
        if p.name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
