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
        with Image.open(path if data is None else io.BytesIO(data)) as im:
            im.verify()
    except FileNotFoundError:
        raise ImagePathRefused("missing: file not found", path) from None
    except UnidentifiedImageError:
        raise ImagePathRefused("not an image: format not recognised", path) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImagePathRefused(f"not a valid image: {e}", path) from None
