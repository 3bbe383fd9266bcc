"""One image path policy for every stage that opens, sends or exports images.

An image path from a manifest or selection must resolve, after following symlinks, to a file inside
the image root: an absolute path elsewhere, a ``..`` that climbs out, or a symlink in the root that
points outside it is refused. presel reads, uploads or exports only files inside the roots it was given.
"""

from __future__ import annotations

import os
from pathlib import Path

from presel.errors import PreselError


class ImagePathRefused(PreselError):
    """An image path presel will not open; ``reason`` is a short text for per-item failure records."""

    def __init__(self, reason: str, path: str | os.PathLike):
        super().__init__(f"image {path}: {reason}; keep images inside the image root (or pass the right "
                         "--image-root)")
        self.reason = reason
        self.path = str(path)


def inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """True when ``path`` (after symlinks) is ``root`` or below it (after symlinks)."""
    r = os.path.realpath(root)
    p = os.path.realpath(path)
    return p == r or p.startswith(r.rstrip(os.sep) + os.sep)


def resolve_image(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """The real path of image ``path`` (relative to ``root``, or absolute), refused unless it lies inside ``root``.

    Raises :class:`ImagePathRefused`. The file is not required to exist (a missing file is the caller's
    usual "missing" case)."""
    p = Path(path)
    full = p if p.is_absolute() else Path(root) / p
    real = os.path.realpath(full)
    if not inside(root, real):
        how = "an absolute path" if p.is_absolute() else "a '..' path" if ".." in p.parts else "a symlink"
        raise ImagePathRefused(f"outside the image root: {how} resolving to {real} (image root {root})", path)
    return Path(real)


def check_decodes(path: str | os.PathLike, data: bytes | None = None) -> None:
    """Refuse a file that does not decode as an image (before it is uploaded or written into a request).

    ``data``: the image bytes already read (an image inside a table, a tar shard or a bucket); ``path`` then
    only names it. :func:`presel.io.sources.check_decodes` is the entry point for any image reference."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with (open_regular(path) if data is None else io.BytesIO(data)) as f, Image.open(f) as im:
            im.verify()
    except FileNotFoundError:
        raise ImagePathRefused("missing: file not found", path) from None
    except NotRegularFile as e:
        raise ImagePathRefused(f"not a file: {e.kind}, not a regular file", path) from None
    except UnidentifiedImageError:
        raise ImagePathRefused("not an image: format not recognised", path) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImagePathRefused(f"not a valid image: {e}", path) from None


# ------------------------------------------------------------------------------------------ regular files only
def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (for reasons and errors)."""
    import stat

    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


class NotRegularFile(OSError):
    """A path that is not a regular file (a FIFO, a device, a socket, a directory): never read from it,
    it may block forever."""

    def __init__(self, path: str | os.PathLike, kind: str):
        super().__init__(f"{kind}, not a regular file")
        self.kind = kind
        self.filename = os.fspath(path)


def open_regular(path: str | os.PathLike):
    """A binary file object for the regular file ``path``; opened non-blocking and checked with fstat first, so
    a FIFO or device never blocks: :class:`NotRegularFile`. A NUL byte in the path is ``ValueError``."""
    import fcntl
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(path, file_kind(st.st_mode))
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def require_regular(path: str | os.PathLike, what: str, *, folder_ok: bool = False) -> None:
    """PreselError unless ``path`` (an input file named by ``what``, e.g. '--pool') is a regular file (or a folder
    with ``folder_ok``); a missing path is left to the caller's own 'not found' error."""
    import stat

    s = os.fspath(path)
    if "\0" in s:
        raise PreselError(f"{what} {s!r}: the path holds a NUL byte; fix the path")
    try:
        mode = os.stat(s).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        raise PreselError(f"{what} {s}: cannot read it ({e.strerror or e}); check the path") from None
    if stat.S_ISREG(mode) or (folder_ok and stat.S_ISDIR(mode)):
        return
    kind = file_kind(mode)
    raise PreselError(f"{what} {s} is {kind}, not a regular file{' or folder' if folder_ok else ''}; presel reads only "
                      "regular files (a pipe or device could block forever): give the file itself")
