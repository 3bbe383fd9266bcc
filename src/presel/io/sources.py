"""One image-source layer: every stage that opens a pool image reads it through here.

An image reference, as written in a pool record, a selection or a training file, is a string:

* a plain path relative to the image root (``coco/train2017/1.jpg``), or a URL (``s3://b/x.jpg``);
* ``parquet:<file>#<column>/<row>`` / ``arrow:<file>#<column>/<row>``: the bytes (or ``{bytes, path}``
  struct) in column ``column`` of row ``row`` (0-based, within that file) of a Parquet file or of an Arrow
  file written by ``datasets``' ``save_to_disk``;
* ``tar:<shard>#<member>``: one member of a WebDataset / img2dataset tar shard, read in place.

``<file>`` / ``<shard>`` are relative to the image root (the pool's folder). :func:`locate` joins a
reference with the root into a *locator* (the same string with an absolute path or URL), which is a plain
string, so it travels to DataLoader workers and Ray tasks; :func:`read_bytes`, :func:`content_hash` and
:func:`load_image` open a locator. Paths must stay inside the image root (:func:`resolve_inside`).

URLs (``s3://``, ``gs://``, ``https://``, ``memory://`` ...) are opened with fsspec when the matching
filesystem package is installed. A missing object is a rejected image; missing credentials or an
unreachable bucket is one :class:`~presel.errors.PreselError` (exit code 2).
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from presel.errors import PreselError
from presel.features.images import ImageRejected

REF_KINDS = ("parquet", "arrow", "tar")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_CACHE_SIZE = 4  # open containers (tar indexes, Parquet row groups, Arrow tables) kept per process


# ------------------------------------------------------------------------------------------ references
def is_url(s: str | os.PathLike) -> bool:
    s = str(s)
    head, sep, _ = s.partition("://")
    return bool(sep) and head.isidentifier() and head.lower() != "file" and len(head) > 1


def split_ref(image: str) -> tuple[str | None, str, str | None]:
    """``(kind, container, member)`` of a reference; ``kind`` None for a plain path or URL."""
    kind, sep, rest = image.partition(":")
    if sep and kind in REF_KINDS and "#" in rest:
        if kind == "tar":
            cut = rest.find(".tar#")
            if cut < 0:
                cut = rest.rfind("#") - 4
            return kind, rest[:cut + 4], rest[cut + 5:]
        container, _, member = rest.rpartition("#")
        return kind, container, member
    return None, image, None


def make_ref(kind: str, container: str, member: str | int) -> str:
    return f"{kind}:{container}#{member}"


def join(root: str | os.PathLike, rel: str) -> str:
    """``rel`` under ``root`` (a folder or a URL prefix), as a string."""
    root = str(root)
    if is_url(root):
        return root.rstrip("/") + "/" + rel.lstrip("/")
    return str(Path(root) / rel)


def resolve_inside(root: str | os.PathLike, path: str) -> str:
    """``path`` (relative to ``root``, or absolute / a URL under it) as a full path or URL; raises
    :class:`presel.io.paths.ImagePathRefused` (a :class:`PreselError`) when it would leave ``root``.

    This is the one inside-the-root policy: local files go through :func:`presel.io.paths.resolve_image`
    (symlink-aware: the real path must lie inside the real root); URLs are normalised and must stay under a
    URL root."""
    from presel.io.paths import ImagePathRefused, resolve_image

    root_s = str(root)
    if is_url(path) or is_url(root_s):
        full = path if is_url(path) else join(root_s, path)
        base = root_s.rstrip("/") + "/"
        norm = full.split("://", 1)[0] + "://" + posixpath.normpath(full.split("://", 1)[1])
        if not is_url(root_s) or not (norm + "/").startswith(base):
            how = "a URL" if is_url(path) else "a '..' path"
            raise ImagePathRefused(f"outside the image root: {how} resolving to {norm} (image root {root_s})", path)
        return norm
    return str(resolve_image(root_s, path))


def locate(image: str, root: str | os.PathLike) -> str:
    """The locator of reference ``image`` under ``root`` (what :func:`read_bytes` opens)."""
    kind, container, member = split_ref(image)
    full = resolve_inside(root, container)
    return full if kind is None else make_ref(kind, full, member)  # type: ignore[arg-type]


def export_name(image: str, root: str | os.PathLike) -> str:
    """A relative file name for an image written out of its container: ``<container path without suffix>/<tar
    member>`` or ``<container path without suffix>/<column>/<row><suffix from the image bytes>``."""
    kind, container, member = split_ref(image)
    if kind is None:
        return container
    stem = posixpath.splitext(posixpath.normpath(container.replace("\\", "/")))[0].lstrip("./") or "images"
    if kind == "tar":
        return f"{stem}/{member}"
    return f"{stem}/{member}{image_suffix(read_bytes(locate(image, root)))}"


# ------------------------------------------------------------------------------------------ opening
def _fs_open(path: str):
    """A binary file object for a local path or an fsspec URL (errors: see :func:`_remote_error`)."""
    if not is_url(path):
        from presel.io.paths import open_regular

        return open_regular(path)  # a FIFO or device is refused, never read (it could block forever)
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec is a dependency
        raise PreselError(f"{path}: reading URLs needs fsspec (pip install fsspec)") from None
    try:
        return url_call(path, lambda: fsspec.open(path, "rb", **storage_options(path)).open())
    except (ImportError, ValueError) as e:
        raise missing_filesystem(path, e) from None
    except (FileNotFoundError, PreselError):
        raise
    except Exception as e:  # noqa: BLE001 - credentials, network: one clear error
        raise _remote_error(path, e) from None


def missing_filesystem(path: str, e: BaseException) -> PreselError:
    scheme = path.split("://", 1)[0]
    pkg = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp",
           "az": "adlfs", "abfs": "adlfs"}.get(scheme, f"the fsspec filesystem for {scheme}://")
    return PreselError(f"{path}: cannot open {scheme}:// URLs ({e}); install {pkg}")


def url_fs(url: str) -> tuple[Any, str]:
    """``(filesystem, path)`` of an fsspec URL; a missing filesystem package is one clear error."""
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec comes with the datasets extra (and most installs)
        raise PreselError(f"{url}: reading URLs needs fsspec (pip install 'presel[datasets]')") from None
    try:
        return fsspec.core.url_to_fs(url, **storage_options(url))
    except (ImportError, ValueError) as e:
        raise missing_filesystem(url, e) from None


# ------------------------------------------------------------------------------------------ http(s) waits
# How long an http(s) server may stay silent (connect, and between bytes) and how often a silent one is retried.
# Environment settings, read when a URL is opened: PRESEL_HTTP_TIMEOUT (seconds, default 30), PRESEL_HTTP_RETRIES
# (default 2).
HTTP_TIMEOUT_ENV, HTTP_RETRIES_ENV = "PRESEL_HTTP_TIMEOUT", "PRESEL_HTTP_RETRIES"


def http_settings() -> tuple[float, int]:
    """(timeout in seconds, retries) for http(s) storage; a bad value is a PreselError naming the variable."""
    out = []
    for name, default, kind in ((HTTP_TIMEOUT_ENV, "30", float), (HTTP_RETRIES_ENV, "2", int)):
        raw = os.environ.get(name, default)
        try:
            v = kind(raw)
            if v < 0 or (kind is float and not (0 < v < float("inf"))):
                raise ValueError
        except ValueError:
            raise PreselError(f"{name}={raw!r} must be a {'number of seconds > 0' if kind is float else 'count >= 0'}")\
                from None
        out.append(v)
    return out[0], out[1]  # type: ignore[return-value]


def _is_http(url: str) -> bool:
    return str(url).split("://", 1)[0].lower() in ("http", "https")


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options for ``url``: for http(s), a connect and read timeout (:func:`http_settings`)."""
    if not _is_http(url):
        return {}
    try:
        import aiohttp
    except ImportError:
        return {}  # fsspec's own error names the missing package
    t, _ = http_settings()
    t /= 2  # fsspec asks a silent server twice (HEAD, then GET): one try then waits about the whole timeout
    return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, connect=t, sock_connect=t, sock_read=t)}}


def _is_timeout(e: BaseException) -> bool:
    import asyncio

    if isinstance(e, TimeoutError | asyncio.TimeoutError):
        return True
    try:
        import aiohttp

        return isinstance(e, aiohttp.ServerTimeoutError)
    except ImportError:  # pragma: no cover
        return False


def url_call(url: str, fn: Any, what: str = "storage") -> Any:
    """``fn()`` (a call that talks to the server of ``url``), retried when the server stays silent past the
    timeout, with a progress line on stderr while waiting; other errors pass through to the caller."""
    import sys
    import threading
    import time

    if not _is_http(url):
        return fn()
    timeout, retries = http_settings()
    for attempt in range(retries + 1):
        stop = threading.Event()
        t0 = time.monotonic()

        def tick(attempt: int = attempt, stop: threading.Event = stop, t0: float = t0) -> None:
            step = max(1.0, min(10.0, timeout / 3))
            while not stop.wait(step):
                print(f"presel: waiting for {url}: no answer for {time.monotonic() - t0:.0f} s (try {attempt + 1} of "
                      f"{retries + 1}, timeout {timeout:g} s)", file=sys.stderr, flush=True)

        threading.Thread(target=tick, daemon=True).start()
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - only silence is retried
            if not _is_timeout(e):
                raise
        finally:
            stop.set()
    raise PreselError(f"{url}: the server accepted the connection but sent no answer within {timeout:g} s "
                      f"({retries + 1} tries); check the URL and the server, or raise {HTTP_TIMEOUT_ENV} / "
                      f"{HTTP_RETRIES_ENV}")


def _remote_error(path: str, e: BaseException) -> PreselError:
    status = getattr(e, "status", None)
    if isinstance(e, FileNotFoundError):
        why = "HTTP 404 Not Found" if _is_http(path) else "not found"
        return PreselError(f"{path}: {why}; check the URL")
    if isinstance(status, int):
        why = f"HTTP {status} {getattr(e, 'message', '') or ''}".rstrip()
    elif _is_timeout(e):
        why = f"no answer within {http_settings()[0]:g} s"
    else:
        from presel.io.text import cut

        why = cut(f"{type(e).__name__}: {e}", 300)
    return PreselError(f"{path}: cannot reach the storage ({why}); check the URL, your network "
                       "and your credentials (e.g. AWS_PROFILE / GOOGLE_APPLICATION_CREDENTIALS)")


def _read_file(path: str) -> bytes:
    try:
        with _fs_open(path) as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageRejected("missing: file not found") from None
    except IsADirectoryError:
        raise ImageRejected("not a file: is a directory") from None
    except ValueError:
        raise ImageRejected("bad path: the path holds a NUL byte") from None
    except PreselError:
        raise
    except OSError as e:
        from presel.io.paths import NotRegularFile

        if isinstance(e, NotRegularFile):
            raise ImageRejected(f"not a file: {e.kind}, not a regular file") from None
        if is_url(path):
            raise _remote_error(path, e) from None
        raise ImageRejected(f"unreadable: {e.strerror or e}") from None
    if not data:
        raise ImageRejected("zero-byte: the file is empty")
    return data


class _LRU:
    def __init__(self, size: int):
        self.size = size
        self.items: OrderedDict[Any, Any] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Any, make):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = make()
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                _, old = self.items.popitem(last=False)
                close = getattr(old, "close", None)
                if close is not None:
                    close()
        return value


_tar_cache = _LRU(_CACHE_SIZE)
_table_cache = _LRU(_CACHE_SIZE)


class TarShard:
    """Member offsets of one tar shard (read from the headers, no data unpacked) + an open handle."""

    def __init__(self, path: str):
        import tarfile

        self.path = path
        try:
            self.f = _fs_open(path)
        except FileNotFoundError:
            raise PreselError(f"{path}: tar shard not found; check --pool") from None
        self.lock = threading.Lock()
        self.members: dict[str, tuple[int, int]] = {}
        try:
            with tarfile.open(fileobj=self.f, mode="r:") as tf:
                for m in tf:
                    if m.isfile():
                        self.members[m.name] = (m.offset_data, m.size)
        except (tarfile.TarError, OSError, EOFError) as e:
            self.f.close()
            raise PreselError(f"{path}: unreadable tar shard ({type(e).__name__}: {e}); re-download or remove that "
                              "shard") from None

    def read(self, member: str) -> bytes:
        if member not in self.members:
            raise ImageRejected(f"missing: no member '{member}' in {self.path}")
        off, size = self.members[member]
        fileno = getattr(self.f, "fileno", None)
        try:
            fd = fileno() if fileno is not None else None
        except (OSError, ValueError, io.UnsupportedOperation):
            fd = None
        if fd is not None:  # a local file: positioned read, no shared offset
            data = os.pread(fd, size, off)
        else:
            with self.lock:
                self.f.seek(off)
                data = self.f.read(size)
        if len(data) != size:
            raise ImageRejected(f"truncated: member '{member}' of {self.path} is cut short")
        return data

    def close(self) -> None:
        self.f.close()


def tar_shard(path: str) -> TarShard:
    # keyed by process: a forked DataLoader worker must not share the parent's file offset
    return _tar_cache.get((os.getpid(), path), lambda: TarShard(path))


class _Table:
    """Random access to the image column of a Parquet file (by row group) or an Arrow (IPC) file."""

    def __init__(self, kind: str, path: str):
        self.kind, self.path = kind, path
        self.column: str | None = None
        self.group: tuple[int, Any] | None = None
        try:
            if kind == "parquet":
                import pyarrow.parquet as pq

                self.f = _fs_open(path)
                self.pf = pq.ParquetFile(self.f)
                self.starts = [0]
                for i in range(self.pf.num_row_groups):
                    self.starts.append(self.starts[-1] + self.pf.metadata.row_group(i).num_rows)
                self.schema = self.pf.schema_arrow
            else:
                self.table = read_arrow(path)
                self.schema = self.table.schema
        except FileNotFoundError:
            raise PreselError(f"{path}: file not found; check --pool") from None
        except PreselError:
            raise
        except Exception as e:  # noqa: BLE001 - a corrupt file: one clear error
            raise PreselError(f"{path}: unreadable {kind} file ({type(e).__name__}: {e})") from None

    def value(self, row: int, column: str) -> Any:
        if self.kind == "arrow":
            if row >= self.table.num_rows:
                raise ImageRejected(f"missing: row {row} is past the end of {self.path}")
            return self.table.column(column)[row].as_py()
        import bisect

        g = bisect.bisect_right(self.starts, row) - 1
        if g >= self.pf.num_row_groups:
            raise ImageRejected(f"missing: row {row} is past the end of {self.path}")
        if self.group is None or self.group[0] != g:
            self.group = (g, self.pf.read_row_group(g, columns=[column]).column(column))
        return self.group[1][row - self.starts[g]].as_py()

    def close(self) -> None:
        f = getattr(self, "f", None)
        if f is not None:
            f.close()


def read_arrow(path: str):
    """A whole Arrow IPC file or stream (``save_to_disk`` writes streams), memory-mapped when local."""
    import pyarrow as pa

    src = pa.memory_map(path) if not is_url(path) else pa.BufferReader(_read_file(path))
    try:
        return pa.ipc.open_stream(src).read_all()
    except pa.ArrowInvalid:
        src = pa.memory_map(path) if not is_url(path) else pa.BufferReader(_read_file(path))
        return pa.ipc.open_file(src).read_all()


def image_column_of(schema: Any, wanted: str, where: str) -> str:
    """The image column: ``wanted`` if present, else the only bytes / ``{bytes, path}`` column."""
    names = list(schema.names)
    if wanted in names:
        return wanted
    cands = [n for n in names if column_kind(schema.field(n).type) in ("bytes", "struct")]
    if len(cands) == 1 and wanted == "image":
        return cands[0]
    raise PreselError(f"{where}: no image column '{wanted}' (columns: {', '.join(names)}); name it with "
                      "--image-column")


def column_kind(t: Any) -> str:
    """'bytes' (binary), 'struct' (``{bytes, path}`` as ``datasets`` writes images), 'path' (string) or 'other'."""
    import pyarrow as pa

    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytes"
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
        return "struct"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "path"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return column_kind(t.value_type)
    return "other"


def _cell_bytes(v: Any) -> bytes:
    if isinstance(v, list):
        if len(v) != 1:
            raise ImageRejected(f"not one image: the cell holds {len(v)} images")
        v = v[0]
    if isinstance(v, dict):
        if v.get("bytes") is None:
            raise ImageRejected(f"no bytes: the image is stored only by path ({v.get('path')!r}); save the dataset "
                                "with embedded image bytes")
        v = v["bytes"]
    if v is None:
        raise ImageRejected("missing: empty image cell")
    if not isinstance(v, (bytes, bytearray)):
        raise ImageRejected(f"not an image: the cell holds {type(v).__name__}")
    if not v:
        raise ImageRejected("zero-byte: the image cell is empty")
    return bytes(v)


def read_bytes(locator: str) -> bytes:
    """The bytes of the image at ``locator``; :class:`ImageRejected` for a missing / empty / absent image,
    :class:`PreselError` for an unreadable container or unreachable storage."""
    kind, container, member = split_ref(locator)
    if kind is None:
        return _read_file(container)
    if kind == "tar":
        data = tar_shard(container).read(member)  # type: ignore[arg-type]
        if not data:
            raise ImageRejected("zero-byte: the tar member is empty")
        return data
    column, _, row_s = member.rpartition("/")  # type: ignore[union-attr]
    try:
        row = int(row_s)
    except ValueError:
        raise ImageRejected(f"bad reference: row '{row_s}' is not a number") from None
    tab = _table_cache.get((os.getpid(), kind, container), lambda: _Table(kind, container))
    if column not in tab.schema.names:
        raise PreselError(f"{container}: no image column '{column}' (columns: {', '.join(tab.schema.names)})")
    return _cell_bytes(tab.value(row, column))


def hash_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def content_hash(locator: str) -> str:
    """blake2b-128 hex digest of the image bytes (the same digest as ``hash_file`` for plain files)."""
    kind, container, _ = split_ref(locator)
    if kind is None and not is_url(container):
        from presel.features.images import hash_file

        return hash_file(container)
    return hash_bytes(read_bytes(locator))


def load_image(locator: str, *, max_pixels: int | None = None) -> Any:
    """Decode the image at ``locator`` into an 8-bit RGB PIL image, or raise :class:`ImageRejected`."""
    from presel.features.images import DEFAULT_MAX_PIXELS, load_rgb

    kind, container, _ = split_ref(locator)
    mp = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if kind is None and not is_url(container):
        return load_rgb(container, max_pixels=mp)
    return load_rgb(io.BytesIO(read_bytes(locator)), max_pixels=mp)


def check_decodes(locator: str) -> None:
    """Refuse an image at ``locator`` that is missing or does not decode (before it is sent anywhere); raises
    :class:`presel.io.paths.ImagePathRefused` with the reason."""
    from presel.io.paths import ImagePathRefused
    from presel.io.paths import check_decodes as check_file

    kind, container, _ = split_ref(locator)
    if kind is None and not is_url(container):
        check_file(container)
        return
    try:
        data = read_bytes(locator)
    except ImageRejected as e:
        raise ImagePathRefused(e.reason, locator) from None
    check_file(locator, data)


def load_hashed(locator: str, *, max_pixels: int | None = None) -> tuple[Any, str]:
    """Decoded image + content hash from one read of the bytes (for workers that hash as they decode)."""
    from presel.features.images import DEFAULT_MAX_PIXELS, load_rgb

    data = read_bytes(locator)
    mp = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    return load_rgb(io.BytesIO(data), max_pixels=mp), hash_bytes(data)


def exists(locator: str) -> bool:
    kind, container, member = split_ref(locator)
    if kind is None:
        if is_url(container):
            fs, p = url_fs(container)
            try:
                return bool(fs.isfile(p))
            except Exception as e:  # noqa: BLE001
                raise _remote_error(container, e) from None
        return Path(container).is_file()
    if kind == "tar":
        return member in tar_shard(container).members
    try:
        read_bytes(locator)
        return True
    except ImageRejected:
        return False


def image_suffix(data: bytes, default: str = ".jpg") -> str:
    """A file suffix from the image magic bytes."""
    sig = data[:12]
    if sig.startswith(b"\x89PNG"):
        return ".png"
    if sig.startswith(b"\xff\xd8"):
        return ".jpg"
    if sig.startswith((b"GIF87a", b"GIF89a")):
        return ".gif"
    if sig[:4] == b"RIFF" and sig[8:12] == b"WEBP":
        return ".webp"
    if sig.startswith(b"BM"):
        return ".bmp"
    if sig.startswith((b"II*\x00", b"MM\x00*")):
        return ".tif"
    return default


def clear_caches() -> None:
    """Close the open containers of this process (tests; after files changed on disk)."""
    for c in (_tar_cache, _table_cache):
        with c.lock:
            for v in c.items.values():
                close = getattr(v, "close", None)
                if close is not None:
                    close()
            c.items.clear()
