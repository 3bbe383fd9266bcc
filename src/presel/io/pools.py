"""Pools kept as datasets rather than image files: Parquet / Arrow tables whose image column holds bytes
(or ``{bytes, path}`` structs, as Hugging Face ``datasets`` writes them), folders written by
``Dataset.save_to_disk``, WebDataset / img2dataset tar shards (``shards-{000000..000999}.tar``), local or
under an fsspec URL (``s3://``, ``gs://``, ``https://``, ``memory://``).

:func:`detect` recognises such a pool and returns a :class:`TableSource` or :class:`TarSource`; their
``records()`` yield ``(line, record)`` like :func:`presel.io.manifest.iter_raw_records`, with the image
field set to an image reference of :mod:`presel.io.sources` (``parquet:FILE#COLUMN/ROW``,
``arrow:FILE#COLUMN/ROW``, ``tar:SHARD#MEMBER``; files relative to ``root``). No image is decoded or hashed
here: that happens in the embedding workers.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from presel.errors import PreselError
from presel.io import sources
from presel.io.sources import IMAGE_EXTENSIONS, is_url

_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")
TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow"}


def expand_braces(pattern: str) -> list[str]:
    """``shards-{000000..000002}.tar`` -> the three names (zero padding kept; several ranges multiply)."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    a, b = m.group(1), m.group(2)
    width = len(a) if a.startswith("0") or len(a) == len(b) else 0
    lo, hi = int(a), int(b)
    if hi < lo:
        raise PreselError(f"--pool {pattern}: brace range {{{a}..{b}}} goes backwards")
    out: list[str] = []
    for i in range(lo, hi + 1):
        out.extend(expand_braces(pattern[:m.start()] + str(i).zfill(width) + pattern[m.end():]))
    return out


def _glob(pattern: str) -> list[str]:
    if is_url(pattern):
        fs, _ = sources.url_fs(pattern)
        try:
            proto = pattern.split("://", 1)[0]
            return sorted(p if "://" in p else f"{proto}://{p.lstrip('/')}" for p in fs.glob(pattern))
        except Exception as e:  # noqa: BLE001
            raise sources._remote_error(pattern, e) from None
    import glob

    return sorted(glob.glob(pattern))


def _listdir(path: str) -> list[str]:
    """Files under a local folder or URL prefix (recursive), as full paths / URLs."""
    if is_url(path):
        fs, p = sources.url_fs(path)
        try:
            proto = path.split("://", 1)[0]
            return sorted(f"{proto}://{q.lstrip('/')}" for q in fs.find(p))
        except Exception as e:  # noqa: BLE001
            raise sources._remote_error(path, e) from None
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames))
    return out


def _isdir(path: str) -> bool:
    if is_url(path):
        fs, p = sources.url_fs(path)
        try:
            return bool(fs.isdir(p))
        except Exception as e:  # noqa: BLE001
            raise sources._remote_error(path, e) from None
    return os.path.isdir(path)


def _exists(path: str) -> bool:
    if is_url(path):
        fs, p = sources.url_fs(path)

        def info() -> bool:
            try:
                fs.info(p)  # unlike fs.exists, says why (refused, HTTP status, silence)
            except FileNotFoundError as e:
                cause = e.__cause__  # fsspec's http filesystem says "not found" for every failure
                if cause is None or getattr(cause, "status", None) in (404, 410):
                    return False
                raise cause from None
            return True

        try:
            return sources.url_call(path, info)
        except PreselError:
            raise
        except Exception as e:  # noqa: BLE001
            raise sources._remote_error(path, e) from None
    return os.path.exists(path)


def _rel(path: str, root: str) -> str:
    if is_url(root) or is_url(path):
        base = root.rstrip("/") + "/"
        if not path.startswith(base):
            raise PreselError(f"{path}: not under the pool root {root}")
        return path[len(base):]
    return Path(os.path.relpath(path, root)).as_posix()


def _parent(path: str) -> str:
    if is_url(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return str(Path(path).parent)


def _suffix(path: str) -> str:
    return posixpath.splitext(path.rstrip("/"))[1].lower()


@dataclass
class TableSource:
    """Parquet / Arrow files with an image column."""

    files: list[str]
    root: str
    image_column: str
    id_field: str
    format: str = "parquet"

    def records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        n = 0
        for f in self.files:
            kind = TABLE_SUFFIXES.get(_suffix(f), "parquet")
            table = _read_table(f, kind, self.image_column)
            col = sources.image_column_of(table.schema, self.image_column, f)
            ckind = sources.column_kind(table.schema.field(col).type)
            others = [c for c in table.schema.names if c not in (col, "__row")]
            rows = table.select(others).to_pylist()
            paths = table.column(col).to_pylist() if ckind == "path" else None
            rel = _rel(f, self.root)
            has_id = self.id_field in others
            for i, rec in enumerate(rows):
                if ckind == "path":
                    rec[self.image_column] = paths[i]  # type: ignore[index]
                elif ckind in ("bytes", "struct"):
                    rec[self.image_column] = sources.make_ref(kind, rel, f"{col}/{i}")
                else:
                    raise PreselError(f"{f}: column '{col}' holds {table.schema.field(col).type}, not image bytes, "
                                      "{bytes, path} structs or paths; name the image column with --image-column")
                if not has_id and self.id_field != "@index":
                    rec[self.id_field] = str(n)  # no id column: the row position in the pool
                n += 1
                yield n, rec


def _read_table(f: str, kind: str, image_column: str):
    """The table at ``f``; for Parquet without the bytes of its image column (only their row count matters
    here; workers read the bytes row group by row group). Arrow files are memory-mapped, so nothing is copied."""
    try:
        if kind == "arrow":
            return sources.read_arrow(f)
        import pyarrow as pa
        import pyarrow.parquet as pq

        fh = sources._fs_open(f)
        try:
            pf = pq.ParquetFile(fh)
            schema = pf.schema_arrow
            col = sources.image_column_of(schema, image_column, f)
            if sources.column_kind(schema.field(col).type) not in ("bytes", "struct"):
                return pf.read()
            others = [c for c in schema.names if c != col]
            t = pf.read(columns=others) if others else pa.table({"__row": pa.nulls(pf.metadata.num_rows)})
            # a placeholder image column of the right type and length (nulls): no bytes are read
            return t.append_column(schema.field(col), pa.nulls(pf.metadata.num_rows, schema.field(col).type))
        finally:
            fh.close()
    except FileNotFoundError:
        raise PreselError(f"{f}: file not found; check --pool") from None
    except PreselError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt file: one clear error
        what = "not a readable Parquet file" if kind == "parquet" else f"unreadable {kind} file"
        raise PreselError(f"{f}: {what} ({type(e).__name__}: {e})") from None


def _first_char(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(1).decode("latin-1")
    except OSError:
        return ""


@dataclass
class TarSource:
    """WebDataset / img2dataset tar shards: members grouped by key (``dir/000123.jpg`` + ``.json`` + ``.txt``)."""

    files: list[str]
    root: str
    id_field: str
    format: str = "webdataset"

    def records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        n = 0
        for f in self.files:
            shard = sources.tar_shard(f)
            rel = _rel(f, self.root)
            samples: dict[str, dict[str, str]] = {}
            for name in shard.members:
                d, base = posixpath.split(name)
                stem, dot, ext = base.partition(".")
                if not dot:
                    continue
                samples.setdefault(posixpath.join(d, stem), {})[ext.lower()] = name
            for key, parts in samples.items():
                rec: dict[str, Any] = {}
                if "json" in parts:
                    try:
                        meta = json.loads(shard.read(parts["json"]))
                    except (ValueError, sources.ImageRejected) as e:
                        raise PreselError(f"{f} member {parts['json']}: not valid JSON ({e}); fix or remove that "
                                          "sample") from None
                    if isinstance(meta, dict):
                        rec.update(meta)
                for ext in ("txt", "caption"):
                    if ext in parts:
                        rec.setdefault("caption", shard.read(parts[ext]).decode("utf-8", "replace"))
                img = next((parts[e] for e in parts if "." + e.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), None)
                rec["image"] = None if img is None else sources.make_ref("tar", rel, img)
                rec["__key__"] = key
                if rec.get(self.id_field) in (None, "") and self.id_field != "@index":
                    rec[self.id_field] = key
                n += 1
                yield n, rec


def detect(pool: str | os.PathLike, *, image_field: str = "image", id_field: str = "id"
           ) -> TableSource | TarSource | None:
    """The dataset source at ``pool`` (file, folder, brace pattern, glob, URL), or None for a manifest or image
    folder that :func:`presel.io.manifest.read_pool` reads itself."""
    s = str(pool)
    if not is_url(s):
        from presel.io.paths import require_regular

        require_regular(s, "--pool", folder_ok=True)  # a FIFO or device would block: refused before opening
    if _BRACE.search(s) or any(c in s.split("://")[-1] for c in "*?["):
        files = [g for p in expand_braces(s) for g in (_glob(p) if any(c in p for c in "*?[") else [p])]
        missing = [f for f in files if not _exists(f)]
        if not files or missing:
            raise PreselError(f"--pool {s}: {len(missing) if files else 'no'} file(s) not found"
                              + (f" (e.g. {missing[0]})" if missing else "") + "; check the pattern")
        return _source_for(files, _parent(s), image_field, id_field, s)
    if s.startswith("hf:") and not os.path.exists(s):
        return _hub_dataset(s[3:], image_field, id_field)
    if not _exists(s):
        if is_url(s):
            raise sources._remote_error(s, FileNotFoundError(s))
        return None
    if _isdir(s):
        names = _listdir(s)
        base = {(_rel(n, s)) for n in names}
        if "dataset_dict.json" in base:
            splits = sorted({b.split("/")[0] for b in base if "/" in b})
            raise PreselError(f"--pool {s}: a DatasetDict with splits {', '.join(splits)}; point --pool at one split "
                              f"folder, e.g. {s.rstrip('/')}/{splits[0] if splits else 'train'}")
        if "state.json" in base:
            files = _state_files(s) or [n for n in names if _suffix(n) == ".arrow"]
            return TableSource(files, s, image_field, id_field, format="hf-disk")
        if any(_suffix(n) in IMAGE_EXTENSIONS for n in names):
            return None  # an image folder
        tars = [n for n in names if _suffix(n) == ".tar"]
        if tars:
            return TarSource(tars, s, id_field)
        tables = [n for n in names if _suffix(n) in TABLE_SUFFIXES]
        if tables:
            return TableSource(tables, s, image_field, id_field, format=TABLE_SUFFIXES[_suffix(tables[0])])
        return None
    suf = _suffix(s)
    if suf == ".tar":
        return TarSource([s], _parent(s), id_field)
    if suf == ".arrow":
        return TableSource([s], _parent(s), image_field, id_field, format="arrow")
    if suf in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            if is_url(s):
                with sources._fs_open(s) as fh:
                    schema = pq.read_schema(fh)
            else:
                schema = pq.read_schema(s)
        except Exception as e:  # noqa: BLE001
            hint = " (it looks like JSON)" if not is_url(s) and _first_char(s) in ("{", "[") else ""
            raise PreselError(f"{s}: not a readable Parquet file{hint} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''}); check --pool") from None
        col = image_field if image_field in schema.names else None
        if col is None:
            if image_field == "image" and "images" in schema.names:
                return None  # ShareGPT-style 'images' lists: read_pool reads them
            col = sources.image_column_of(schema, image_field, s)  # the only bytes column, or a clear error
        if sources.column_kind(schema.field(col).type) in ("bytes", "struct") or is_url(s):
            return TableSource([s], _parent(s), image_field, id_field, format="parquet")
    return None


def source_root(pool: str | os.PathLike) -> Any:
    """The image root of a dataset pool (Path, or URL string), or None when ``pool`` is a plain manifest or an
    image folder. Cheap: lists files, reads no images."""
    s = str(pool)
    if is_url(s) or _BRACE.search(s) or any(c in s for c in "*?["):
        root = _parent(s) if _BRACE.search(s) or any(c in s for c in "*?[") or not _isdir(s) else s.rstrip("/")
        return root if is_url(root) else Path(root)
    if not os.path.exists(s):
        return None
    if os.path.isdir(s):
        return None  # a save_to_disk / shard / table folder is its own root, as for an image folder
    return Path(s).parent if _suffix(s) in (".tar", *TABLE_SUFFIXES) else None


def _source_for(files: list[str], root: str, image_field: str, id_field: str, what: str):
    kinds = {_suffix(f) for f in files}
    if kinds == {".tar"}:
        return TarSource(files, root, id_field)
    if kinds <= set(TABLE_SUFFIXES):
        return TableSource(files, root, image_field, id_field, format=TABLE_SUFFIXES[sorted(kinds)[0]])
    raise PreselError(f"--pool {what}: a pattern must name .tar shards or .parquet/.arrow files (got "
                      f"{', '.join(sorted(kinds))})")


def _state_files(root: str) -> list[str]:
    try:
        with sources._fs_open(sources.join(root, "state.json")) as f:
            state = json.loads(f.read())
        return [sources.join(root, d["filename"]) for d in state.get("_data_files", [])]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _hub_dataset(name: str, image_field: str, id_field: str) -> TableSource | None:
    """A Hugging Face hub id (``--pool hf:org/name`` or ``hf:org/name:split``) loaded with ``datasets`` when it is
    installed and the hub is reachable; its cached Arrow files become the pool. Explicit, so that a mistyped
    local path never goes to the network."""
    m = re.fullmatch(r"([\w.-]+/[\w.-]+)(?::([\w.-]+))?", name)
    if m is None:
        raise PreselError(f"--pool hf:{name}: a hub dataset is named hf:ORG/NAME or hf:ORG/NAME:SPLIT")
    try:
        import datasets
    except ImportError:
        raise PreselError(f"--pool hf:{name}: reading hub datasets needs the datasets package "
                          "(pip install 'presel[datasets]')") from None
    try:
        ds = datasets.load_dataset(m.group(1), split=m.group(2) or "train")
    except Exception as e:  # noqa: BLE001 - offline, unknown id: one clear error
        raise PreselError(f"--pool {name}: not a local path, and loading it as a Hugging Face dataset failed "
                          f"({type(e).__name__}: {e}); check the path, or save the dataset with save_to_disk") from None
    files = [c["filename"] for c in ds.cache_files]
    if not files:
        raise PreselError(f"--pool {name}: the dataset has no cache files; save it with save_to_disk and pass that folder")
    return TableSource(files, os.path.commonpath([os.path.dirname(f) for f in files]), image_field, id_field,
                       format="hf-hub")
