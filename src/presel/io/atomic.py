"""Atomic writes: build outputs under a temporary name, rename at the end.

A failed command never leaves a half-written file or directory behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from presel.errors import PreselError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR,
                 errno.ENOTDIR}


def _write_error(e: OSError, out: Path) -> PreselError:
    """A located error for an OSError met while writing ``out`` (full disk, read-only or unwritable folder)."""
    why = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.EFBIG: "file too large for the file system", errno.EROFS: "read-only file system",
           errno.EACCES: "permission denied", errno.EPERM: "permission denied",
           errno.EISDIR: "a directory is in the way", errno.ENOTDIR: "a file is in the way of a folder",
           errno.EEXIST: "a file is in the way of a folder"}
    err = PreselError(f"cannot write {out}: {why.get(e.errno, e.strerror or str(e))}; free space, fix the "
                      "permissions or choose another --out (nothing was half-written)")
    err.errno = e.errno  # type: ignore[attr-defined]  # callers that know the size needed say it (embed)
    return err


def _ours(e: BaseException, tmp: str | os.PathLike) -> bool:
    """An OSError of writing the output (not of reading some input inside the with-block)."""
    if not isinstance(e, OSError) or e.errno not in _WRITE_ERRNOS:
        return False
    return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or e.filename is None or \
        str(e.filename).startswith(str(tmp))


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``out``; on success it replaces ``out``.

    If ``out`` exists and is non-empty, it is an error unless ``overwrite`` is set, and even then
    only a folder presel wrote is replaced (:mod:`presel.io.owned`). On any exception the temporary
    directory is removed and ``out`` is left untouched.
    """
    from presel.io.owned import check_deletable

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PreselError(f"--out {out} exists and is not a directory; choose another path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise PreselError(f"--out {out} already exists and is not empty; remove it, choose another path or pass --overwrite")
        check_deletable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise _write_error(e, out) from None
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs get the usual permissions
    try:
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _ours(e, tmp):
            raise _write_error(e, out) from None  # type: ignore[arg-type]
        raise
    try:
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(e, out) from None


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **kw: Any) -> Iterator[Any]:
    """Open a temporary file next to ``path``; it is fsynced and renamed onto ``path`` on success."""
    path = Path(path)
    if path.is_dir():
        raise PreselError(f"{path} is an existing directory, but a file is written there; give a file path "
                          f"(e.g. {path / 'out.json'}) or move the directory away")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    except OSError as e:
        raise _write_error(e, path) from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        if "b" not in mode:
            kw.setdefault("encoding", "utf-8")
        with open(tmp, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if _ours(e, tmp):
            raise _write_error(e, path) from None  # type: ignore[arg-type]
        raise


def dumps_json(obj: Any) -> str:
    """Stable JSON text (sorted keys) so identical inputs give byte-identical files."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=json_default) + "\n"


def json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_file(path) as f:
        f.write(dumps_json(obj))


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_file(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=json_default, separators=(", ", ": ")) + "\n")


def write_parquet(path: str | os.PathLike, table: Any) -> None:
    """Write a pyarrow Table (or a dict of columns) atomically, deterministically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(table, dict):
        table = pa.table(table)
    with atomic_file(path, "wb") as f:
        pq.write_table(table, f, compression="zstd", write_statistics=False)
