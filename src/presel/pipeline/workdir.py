"""The resume protocol of ``presel run``: one helper for every stage's output folder.

A stage folder is presel's when it holds presel's completion marker (``.presel-stage.json``) or when
the run's pending record (``<out>/.presel-pending/<stage>.json``, written before the stage starts)
names it. Only such a folder is ever deleted; any other folder in a stage's place stops the run with
an error that names it. The marker and the pending record carry the stage key (a hash of the
result-relevant settings, the upstream stages' keys and the input files' fingerprints) and the
parts of it, so a rerun can say what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presel.io.atomic import dumps_json, write_json
from presel.io.digest import file_sha256
from presel.layout import MARKER, PENDING  # where they lie is the layout's

# what presel's writers leave beside an output folder: atomic_dir's temporary and replaced folders, fine-tuning's
# checkpoints; anything else named like ``.<dir>.*`` is not presel's and stays
LEFTOVERS = (".tmp-*", ".old-*", ".finetune-work")
VERSION = 2  # markers of version 1 (no version field) hold the whole section as settings


def fingerprint(path: Path | None) -> str | None:
    """Content hash of a file (size + sha256 for files up to 256 MB, size + mtime beyond), or of a folder listing."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            if p.is_file() and p.name != MARKER:
                st = p.stat()
                h.update(f"{p.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return "dir:" + h.hexdigest()[:16]
    st = path.stat()
    if st.st_size > 256 * 2**20:
        return f"big:{st.st_size}:{st.st_mtime_ns}"
    return file_sha256(path)[:16]


def key_hash(blob: Any) -> str:
    """The one key hash of presel's resume records: sha256 of canonical JSON, 20 hex digits."""
    return hashlib.sha256(dumps_json(blob).encode()).hexdigest()[:20]


def stage_key(name: str, settings: dict[str, Any], upstream: dict[str, str], files: dict[str, Path | None]) -> str:
    return key_hash({"stage": name, "settings": settings, "upstream": upstream,
                     "files": {k: fingerprint(v) for k, v in files.items()}})


@dataclass
class KeyParts:
    """What a stage key is made of; stored in the marker so that a rerun can name what changed."""

    stage: str
    settings: dict[str, Any]
    upstream: dict[str, str]
    files: dict[str, Path | None]
    prints: dict[str, str | None] = field(default_factory=dict)
    reformat: frozenset[str] = frozenset()  # settings that only change an output's form: not in ``work_key``

    def __post_init__(self) -> None:
        self.prints = {k: fingerprint(v) for k, v in self.files.items()}

    @property
    def key(self) -> str:
        return key_hash({"stage": self.stage, "settings": self.settings, "upstream": self.upstream,
                         "files": self.prints})

    @property
    def work_key(self) -> str:
        """The key of the work itself: the stage key without the settings that only change an output's form. A
        finished stage of the same work key rewrites its outputs from what it has; later stages see this key."""
        settings = {k: v for k, v in self.settings.items() if k not in self.reformat}
        if settings == self.settings:
            return self.key
        return key_hash({"stage": self.stage, "settings": settings, "upstream": self.upstream, "files": self.prints})

    def record(self) -> dict[str, Any]:
        return {"key": self.key, "work_key": self.work_key, "stage": self.stage, "version": VERSION,
                "settings": self.settings,
                "upstream": self.upstream, "files": {k: str(v) if v is not None else None for k, v in self.files.items()},
                "fingerprints": self.prints}


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_marker(stage_dir: Path) -> dict[str, Any] | None:
    return read_json(Path(stage_dir) / MARKER)


@dataclass
class StageDir:
    """One stage's output folder in a run: its marker, its pending record, and what may be deleted."""

    run_dir: Path
    stage: str
    path: Path

    @property
    def pending_path(self) -> Path:
        return self.run_dir / PENDING / f"{self.stage}.json"

    def marker(self) -> dict[str, Any] | None:
        return read_marker(self.path)

    def pending(self) -> dict[str, Any] | None:
        return read_json(self.pending_path)

    def proven(self) -> bool:
        """presel wrote this folder: its marker is there, or the pending record of this run names it."""
        return self.marker() is not None or self.pending() is not None

    def check_owned(self) -> None:
        """Stop when something presel cannot prove it wrote sits where this stage writes: the one rule of
        :func:`presel.io.owned.check_deletable`, with this run's pending record as the proof that it began."""
        from presel.io.owned import check_deletable

        check_deletable(self.path, started=self.pending() is not None, only=(MARKER,), what="stage folder",
                        linked_proof=True, evidence=f"no {MARKER} in it, no record in {self.pending_path.parent}",
                        fix=f"stage '{self.stage}' would replace it: move it away, or choose another `out` for the "
                            "run; nothing was changed")

    def foreign_files(self) -> list[Path]:
        """Files in a finished stage folder that the stage did not write (a user's notes.txt): not in the
        marker's list of outputs, or (markers without that list) newer than the marker."""
        marker = self.marker()
        if marker is None or not self.path.is_dir():
            return []
        listed = marker.get("outputs")
        mark_time = (self.path / MARKER).stat().st_mtime_ns
        out = []
        for p in sorted(self.path.rglob("*")):
            if p.name == MARKER or (p.is_dir() and not p.is_symlink()):
                continue
            rel = p.relative_to(self.path).as_posix()
            if (rel not in listed) if isinstance(listed, list) else p.lstat().st_mtime_ns > mark_time:
                out.append(p)
        return out

    def keep_foreign(self) -> Path | None:
        """Move the user's files out of this stage folder (to ``<run>/<stage>.kept-N/``) before it is replaced."""
        files = self.foreign_files()
        if not files:
            return None
        n = 1
        while (dest := self.path.parent / f"{self.path.name}.kept-{n}").exists():
            n += 1
        for p in files:
            target = dest / p.relative_to(self.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, target)
        names = ", ".join(p.relative_to(self.path).as_posix() for p in files[:5]) + (" ..." if len(files) > 5 else "")
        print(f"stage '{self.stage}' reruns: {len(files)} file(s) in {self.path} that presel did not write "
              f"({names}) moved to {dest}", file=sys.stderr)
        return dest

    def clear(self) -> None:
        """Remove this stage's output and the work leftovers that presel names beside it (``LEFTOVERS``); files a
        user added to a finished stage folder are moved aside first (:meth:`keep_foreign`)."""
        self.check_owned()
        self.keep_foreign()
        proven = self.proven()
        victims = [self.path]
        if proven:
            victims += [p for pat in LEFTOVERS for p in self.path.parent.glob(f".{self.path.name}{pat}")]
        for p in victims:
            if p.is_dir() and not p.is_symlink():
                if p == self.path and not proven:
                    p.rmdir()  # empty (check_owned)
                else:
                    shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()

    def begin(self, parts: KeyParts) -> None:
        write_json(self.pending_path, parts.record())

    def finish(self, parts: KeyParts) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        outputs = sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*")
                         if p.name != MARKER and not (p.is_dir() and not p.is_symlink()))
        write_json(self.path / MARKER, {**parts.record(), "outputs": outputs})
        self.pending_path.unlink(missing_ok=True)
