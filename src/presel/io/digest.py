"""The one file digest of presel's records: sha256 of a file's bytes, read in 4 MiB blocks."""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of the bytes of ``path`` (callers keep a prefix where their records always did)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
