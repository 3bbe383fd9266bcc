"""Read pool manifests in the formats users already have.

Supported: LLaVA JSON (a list) and JSONL (``id``, ``image``, ``conversations``), Vision-FLAN
records (``task_name``), ShareGPT/messages records (``messages``, ``images``), generic
JSONL/CSV/Parquet (``id``, ``image``, ``task``) and image folders (task = first-level
subfolder). The task of a record comes from, in this order: a mapping file (id -> task),
image-path prefix rules, a named field, the fields ``task`` / ``task_name``, a default.
Records with no image (text-only) are counted and left out.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from presel.errors import PreselError
from presel.io.sources import is_url
from presel.records import Pool, PoolRecord, Turn, image_key

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUTO_TASK_FIELDS = ("task", "task_name")
ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _format_of(path: Path) -> str:
    if path.is_dir():
        return "folder"
    suffixes = "".join(path.suffixes[-2:]).lower()
    for fmt, ends in (("jsonl", (".jsonl", ".ndjson")), ("json", (".json",)), ("csv", (".csv",)),
                      ("parquet", (".parquet", ".pq"))):
        if suffixes.endswith(ends) or path.suffix.lower() in ends:
            return fmt
    raise PreselError(f"{path}: unknown manifest format '{path.suffix}'; use .json, .jsonl, .csv, .parquet or an image folder")


def iter_raw_records(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line, record)`` from a JSON list, JSONL, CSV or Parquet file; ``line`` is 1-based."""
    from presel.io.paths import require_regular

    path = Path(path)
    if not path.exists():
        raise PreselError(f"{path}: file not found; check the path")
    require_regular(path, "file")
    fmt = _format_of(path)
    if fmt == "jsonl":
        yield from iter_jsonl(path)
    elif fmt == "json":
        from presel.io.jsonlist import iter_json_list

        for pos, rec in iter_json_list(path, flag="a .json manifest (use .jsonl for one record per line)"):
            if not isinstance(rec, dict):
                raise PreselError(f"{path} record {pos + 1}: expected a JSON object, got {type(rec).__name__}; fix that record")
            yield pos + 1, rec
    elif fmt == "csv":
        with open(path, "rb") as f:
            lines = (utf8_line(raw, path, n) for n, raw in enumerate(f, 1))  # bad UTF-8: its exact line
            reader = csv.DictReader(lines)
            try:
                for rec in reader:
                    yield reader.line_num, {k: v for k, v in rec.items() if k is not None}
            except csv.Error as e:
                raise PreselError(f"{path} line {reader.line_num}: not valid CSV ({e}); fix that line") from None
    elif fmt == "parquet":
        table = read_parquet(path)
        for n, rec in enumerate(table.to_pylist(), 1):
            yield n, rec
    else:  # pragma: no cover - folders are handled by read_pool
        raise PreselError(f"{path}: not a record file")


def iter_jsonl(path: str | os.PathLike, *, fix: str = "fix or remove that line") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of a JSON Lines file; blank lines skipped, anything else that is not a JSON
    object is a PreselError naming the file and line (``fix`` says what to do)."""
    from presel.io.paths import require_regular

    require_regular(path, "file")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            line = utf8_line(raw, path, n)
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise PreselError(f"{path} line {n}: not valid JSON ({e.msg}); {fix}") from None
            except RecursionError:
                raise PreselError(f"{path} line {n}: JSON nested too deeply (more than Python can read); {fix}") from None
            if not isinstance(rec, dict):
                raise PreselError(f"{path} line {n}: expected a JSON object, got {type(rec).__name__}; {fix}")
            yield n, rec


def utf8_line(raw: bytes, path: str | os.PathLike, n: int) -> str:
    """Line ``n`` of a text file, decoded; invalid UTF-8 is a PreselError naming the file, line and column."""
    try:
        return raw.decode("utf-8-sig" if n == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise PreselError(f"{path} line {n}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                          "save the file as UTF-8") from None


def read_parquet(path: str | os.PathLike, *, columns: Sequence[str] | None = None,
                 what: str = "a valid Parquet file (write it again)") -> Any:
    """A Parquet file as a pyarrow Table; a corrupt or non-Parquet file is a PreselError naming the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from presel.io.paths import require_regular

    path = Path(path)
    require_regular(path, "file")
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except FileNotFoundError:
        raise PreselError(f"{path}: file not found; check the path") from None
    except (pa.ArrowException, OSError) as e:
        head = ""
        try:
            with open(path, "rb") as f:
                head = f.read(1).decode("latin-1")
        except OSError:
            pass
        hint = " (it looks like JSON)" if head in ("{", "[") else ""
        raise PreselError(f"{path}: not a readable Parquet file{hint} ({str(e).splitlines()[0][:160]}); "
                          f"pass {what}") from None


def read_json_file(path: str | os.PathLike, *, missing: str, fix: str = "fix the file") -> Any:
    """A whole (small) JSON file; a missing file or invalid JSON is a :class:`PreselError` naming the path,
    the line and ``missing`` / ``fix`` (what to do)."""
    from presel.io.paths import require_regular

    path = Path(path)
    require_regular(path, "file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PreselError(f"{path}: {missing}") from None
    except json.JSONDecodeError as e:
        raise PreselError(f"{path} line {e.lineno}: not valid JSON ({e.msg}); {fix}") from None
    except RecursionError:
        raise PreselError(f"{path}: JSON nested too deeply (more than Python can read); {fix}") from None
    except UnicodeDecodeError as e:
        raise PreselError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8") from None


def load_task_map(path: str | os.PathLike) -> dict[str, str]:
    """An id -> task mapping from a JSON object, or JSONL/CSV/Parquet rows with ``id`` and ``task``."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = read_json_file(path, missing="task map not found; check --task-map")
        if isinstance(data, dict):
            return {str(k): scalar_text(v, f"{path} id {k!r}", "task") for k, v in data.items()}
        raise PreselError(f"{path}: a JSON task map must be an object {{id: task}}")
    out: dict[str, str] = {}
    for n, rec in iter_raw_records(path):
        if "id" not in rec or "task" not in rec:
            raise PreselError(f"{path} line {n}: task map rows need 'id' and 'task' columns")
        out[scalar_text(rec["id"], f"{path} line {n}", "id")] = scalar_text(rec["task"], f"{path} line {n}", "task")
    return out


def parse_task_rules(rules: Sequence[str] | Mapping[str, str] | str | os.PathLike | None) -> list[tuple[str, str]]:
    """Prefix rules ``[(prefix, task), ...]`` from ``["coco/=coco", ...]``, a mapping, or a YAML/JSON file.

    The first rule whose prefix starts the record's normalised image path wins.
    """
    if rules is None:
        return []
    if isinstance(rules, (str, os.PathLike)) and Path(rules).suffix.lower() in {".yaml", ".yml", ".json"}:
        from presel.io.yamlfile import read_yaml

        data = read_yaml(rules, what="task rules file", mapping=False)
        if isinstance(data, dict):
            return [(scalar_text(k, str(rules), "prefix"), scalar_text(v, f"{rules}: rule {k!r}", "task"))
                    for k, v in data.items()]
        if isinstance(data, list):
            flat = []
            for i, x in enumerate(data, 1):
                if isinstance(x, dict) and not ("prefix" in x and "task" in x):
                    raise PreselError(f"{rules}: rule {i} {x!r:.200} needs both 'prefix' and 'task' "
                                      "(e.g. - {prefix: coco/, task: coco})")
                where = f"{rules}: rule {i}"
                flat.append(f"{scalar_text(x['prefix'], where, 'prefix')}={scalar_text(x['task'], where, 'task')}"
                            if isinstance(x, dict) else scalar_text(x, where, "rule"))
            return parse_task_rules(flat)
        raise PreselError(f"{rules}: task rules must be a mapping prefix -> task")
    if isinstance(rules, Mapping):
        return [(scalar_text(k, "task rules", "prefix"), scalar_text(v, f"task rule {k!r}", "task"))
                for k, v in rules.items()]
    if isinstance(rules, str):
        rules = [rules]
    out = []
    for r in rules:
        if "=" not in r:
            raise PreselError(f"task rule '{r}' must look like PREFIX=TASK, e.g. coco/=coco")
        prefix, task = r.split("=", 1)
        out.append((image_key(prefix) + ("/" if prefix.endswith("/") else ""), task))
    return out


def _conversations(rec: dict[str, Any], where: str) -> tuple[Turn, ...] | None:
    conv = rec.get("conversations")
    if conv is None and "messages" in rec:
        conv = rec["messages"]
    if conv is None:
        return None
    if not isinstance(conv, list):
        raise PreselError(f"{where}: 'conversations' must be a list of turns")
    turns = []
    for t in conv:
        if not isinstance(t, dict):
            raise PreselError(f"{where}: each conversation turn must be an object with from/value or role/content")
        role = t.get("from", t.get("role"))
        text = t.get("value", t.get("content"))
        if isinstance(text, list):  # OpenAI-style content parts
            text = "".join("<image>" if p.get("type") in ("image", "image_url") else str(p.get("text", ""))
                           for p in text if isinstance(p, dict))
        if role not in ROLE_MAP or not isinstance(text, str):
            raise PreselError(f"{where}: conversation turn needs from/role in {sorted(ROLE_MAP)} and a text value; got {t!r:.80}")
        turns.append(Turn(ROLE_MAP[role], text))
    return tuple(turns)


def _image_of(rec: dict[str, Any], image_field: str, where: str) -> str | None:
    img = rec.get(image_field)
    if img is None and image_field == "image" and "images" in rec:
        img = rec["images"]
    if isinstance(img, list):
        if len(img) == 0:
            return None
        if len(img) > 1:
            raise PreselError(f"{where}: record has {len(img)} images; presel selects single-image records; "
                              "split it into one record per image")
        img = img[0]
    if img is None or (isinstance(img, float) and img != img) or img == "":
        return None
    if not isinstance(img, str):
        raise PreselError(f"{where}: '{image_field}' must be a path string, got {type(img).__name__}")
    check_text(img, f"{where}: '{image_field}'", nul=True)
    return img


def check_text(value: str, where: str, *, nul: bool = False) -> None:
    """A string from a manifest that presel will store and write: valid Unicode (no lone surrogate such as a
    non-UTF-8 file name), and for paths no NUL byte."""
    from presel.io.text import short

    if nul and "\0" in value:
        raise PreselError(f"{where} {short(value)} holds a NUL byte, which no file name can; fix that record")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PreselError(f"{where} {short(value)} is not valid Unicode (a lone surrogate, e.g. a file name that is "
                          "not UTF-8); rename the file to UTF-8 (e.g. with convmv) and fix that record") from None


def scalar_text(value: Any, where: str, what: str) -> str:
    """An id or task from a record as text: a string or a number; a list, object or boolean is an error."""
    from presel.io.text import short

    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PreselError(f"{where}: '{what}' must be a string or a number, got {type(value).__name__} "
                          f"{short(value)}; fix that record")
    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        raise PreselError(f"{where}: '{what}' is {value} (NaN or infinite, e.g. 1e400 in JSON); fix that record")
    text = str(value)
    check_text(text, f"{where}: '{what}'")
    return text


def read_pool(
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    task_field: str | None = None,
    task_map: str | os.PathLike | Mapping[str, str] | None = None,
    task_rules: Sequence[str] | Mapping[str, str] | str | os.PathLike | None = None,
    default_task: str | None = None,
    id_field: str = "id",
    image_field: str = "image",
    keep_extra: bool = False,
    flag: str = "--pool",
    task_fix: str | None = None,
) -> Pool:
    """Read a pool manifest (or an image folder) into a :class:`Pool`.

    ``id_field="@index"`` keys records by their position (``"0"``, ``"1"``, ...), for files
    whose ids are not unique (LLaVA-665K). ``flag`` names the file's option and ``task_fix`` the ways to give
    a record its task, in error messages of commands whose options differ from ``presel select``'s.
    """
    from presel.io.pools import detect

    source = detect(path, image_field=image_field, id_field=id_field)
    if source is not None:  # Parquet/Arrow with image bytes, save_to_disk folders, tar shards, URLs
        fmt = source.format
        root = image_root if image_root is not None else source.root
        raw_records = source.records()
        path = str(path) if is_url(path) or not Path(path).exists() else Path(path)
    elif is_url(path):
        raise PreselError(f"{flag} {path}: a {Path(str(path)).suffix or 'plain'} manifest is not read from a URL; "
                          "download it first, or keep the pool as Parquet / WebDataset tar shards / a dataset folder")
    else:
        from presel.io.paths import require_regular

        path = Path(path)
        if not path.exists():
            raise PreselError(f"{path}: {'pool manifest' if flag == '--pool' else 'file'} not found; check {flag}")
        require_regular(path, flag, folder_ok=True)
        fmt = _format_of(path)
        root = image_root if image_root is not None else (path if fmt == "folder" else path.parent)
        if fmt == "folder":
            return _read_folder(path, _root(root), default_task)
        raw_records = iter_raw_records(path)
    root = _root(root)

    tmap = load_task_map(task_map) if isinstance(task_map, (str, os.PathLike)) else (dict(task_map) if task_map else None)
    rules = parse_task_rules(task_rules)
    records: list[PoolRecord] = []
    first_line: dict[str, int] = {}
    text_only = 0
    for pos, (line, rec) in enumerate(raw_records):
        where = f"{path} line {line}" if fmt in ("jsonl", "csv") else f"{path} record {line}"
        if id_field == "@index":
            rid = str(pos)
        else:
            raw = rec.get(id_field)
            if raw is None or raw == "":
                raise PreselError(f"{where}: missing '{id_field}'; add ids, name the id column with --id-field, "
                                  "or pass --id-field @index to key records by position")
            rid = scalar_text(raw, where, id_field)
        image = _image_of(rec, image_field, where)
        if image is None:
            text_only += 1
            continue
        if rid in first_line:
            raise PreselError(f"{where}: duplicate id '{rid}' (first on line/record {first_line[rid]}); make ids unique "
                              "or pass --id-field @index to key records by position")
        first_line[rid] = line
        key = image_key(image)
        task = None
        if tmap is not None:
            task = tmap.get(rid)
        if task is None and rules:
            task = next((t for prefix, t in rules if key.startswith(prefix)), None)
        if task is None and task_field:
            v = rec.get(task_field)
            task = None if v is None or v == "" else scalar_text(v, where, task_field)
        if task is None and not task_field:
            task = next((scalar_text(rec[f], where, f) for f in AUTO_TASK_FIELDS if rec.get(f) not in (None, "")), None)
        if task is None:
            task = default_task
        if task is None:
            raise PreselError(f"{where}: no task for id '{rid}' (image {image}); " + (task_fix or (
                "give a task field (--task-field), an id->task map (--task-map), prefix rules (--task-rule "
                "PREFIX=TASK) or --default-task")))
        extra = None
        if keep_extra:
            extra = {k: v for k, v in rec.items() if k not in (id_field, image_field, "conversations", "messages")}
        records.append(PoolRecord(rid, image, task, line, _conversations(rec, where), extra))
    if not records:
        raise PreselError(f"{path}: no image records found ({text_only} text-only); a pool needs images")
    return Pool(records, path, root, text_only=text_only, format=fmt)


def _root(root: str | os.PathLike) -> Any:
    """The image root: a Path, or the URL string for a root under fsspec (``s3://bucket/prefix``)."""
    return str(root).rstrip("/") if is_url(root) else Path(root)


def _read_folder(path: Path, root: Path, default_task: str | None) -> Pool:
    records: list[PoolRecord] = []
    n = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            n += 1
            rel = Path(dirpath, name).relative_to(path).as_posix()
            check_text(rel, f"{path}: image file name")
            parts = rel.split("/")
            task = parts[0] if len(parts) > 1 else default_task
            if task is None:
                raise PreselError(f"{path}/{rel}: image outside a task subfolder; put each task's images in "
                                  "<folder>/<task>/... or pass --default-task")
            records.append(PoolRecord(rel, rel, task, n))
    if not records:
        raise PreselError(f"{path}: no images found (extensions {sorted(IMAGE_EXTENSIONS)})")
    return Pool(records, path, root, format="folder")


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Ids from a text file (one per line) or from the ``id`` field of a manifest."""
    from presel.io.paths import require_regular

    path = Path(path)
    if not path.exists():
        raise PreselError(f"{path}: file not found")
    require_regular(path, "file")
    if path.suffix.lower() in (".txt", ".ids", ""):
        with open(path, "rb") as f:
            return [s for s in (utf8_line(raw, path, n).strip() for n, raw in enumerate(f, 1)) if s]
    out = []
    for n, rec in iter_raw_records(path):
        if rec.get("id") in (None, ""):
            raise PreselError(f"{path} line {n}: missing 'id'")
        out.append(scalar_text(rec["id"], f"{path} line {n}", "id"))
    return out
