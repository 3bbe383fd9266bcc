"""Inputs and outputs shared by online, oracle and batch generation.

* the selection written by ``presel select`` (``id``, ``image``, ``task``, ``source`` ...);
* annotated LLaVA JSON/JSONL (reference annotations, oracle annotations), indexed by id and image;
* the append-only results/failures files of an output directory (one JSON line per finished item,
  flushed and fsynced; a torn last line from a kill is cut off on reopening);
* ``train.json`` assembly: reference annotations + generated (or oracle) conversations.

Several annotation records for one selected row (same image, same task) are all kept: the first keeps
the selection id, the others get ``<id>#1``, ``<id>#2``... so ids stay unique in ``train.json``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presel.errors import PreselError
from presel.records import image_key

SOURCES = ("reference", "selected")
MATCHES = ("id", "image", "auto")


@dataclass(frozen=True)
class SelectionRow:
    id: str
    image: str
    task: str
    source: str  # "reference" | "selected"
    line: int


def read_selection(path: str | os.PathLike) -> list[SelectionRow]:
    """Rows of a selection file (Parquet, JSONL, JSON or CSV) with ``id``, ``image``, ``task`` and ``source``
    (a file without ``source`` counts every row as selected)."""
    from presel.io.manifest import check_text, iter_raw_records, scalar_text

    path = Path(path)
    if not path.is_file():
        raise PreselError(f"{path}: selection file not found; pass the selection.parquet (or .jsonl) written by presel select")
    rows: list[SelectionRow] = []
    seen: dict[str, int] = {}
    for line, rec in iter_raw_records(path):
        for col in ("id", "image", "task"):
            if rec.get(col) in (None, ""):
                raise PreselError(f"{path} line {line}: missing '{col}'; a selection needs id, image, task (and source)")
        where = f"{path} line {line}"
        rid = scalar_text(rec["id"], where, "id")
        if not isinstance(rec["image"], str):
            raise PreselError(f"{where}: 'image' must be a path string, got {type(rec['image']).__name__}")
        check_text(rec["image"], f"{where}: 'image'", nul=True)
        scalar_text(rec["task"], where, "task")
        if rid in seen:
            raise PreselError(f"{path} line {line}: duplicate id '{rid}' (first on line {seen[rid]}); ids must be unique")
        seen[rid] = line
        source = str(rec.get("source") or "selected")
        if source not in SOURCES:
            raise PreselError(f"{path} line {line}: source={source!r} must be one of {', '.join(SOURCES)}")
        rows.append(SelectionRow(rid, str(rec["image"]), str(rec["task"]), source, line))
    if not rows:
        raise PreselError(f"{path}: the selection is empty")
    return rows


def resolve_image_root(selection_path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                       pool: str | os.PathLike | None = None) -> Path:
    """``image_root`` if given, else the pool manifest's folder (the folder itself for an image-folder pool),
    else the selection file's folder."""
    from presel.io.pools import source_root
    from presel.io.sources import is_url

    if image_root is not None:
        return str(image_root) if is_url(image_root) else Path(image_root)  # type: ignore[return-value]
    if pool is not None:
        root = source_root(pool)  # a dataset pool (tables, tar shards, URLs): the folder its references start from
        if root is not None:
            return root  # type: ignore[return-value]
        p = Path(pool)
        return p if p.is_dir() else p.parent
    return Path(selection_path).parent


def check_images(rows: Iterable[SelectionRow], root: Path) -> None:
    """Every image must exist; else one error naming the count, examples and the fix."""
    from presel.io.paths import ImagePathRefused
    from presel.io.sources import exists

    def absent(r: SelectionRow) -> bool:
        try:
            return not exists(image_file(r, root))
        except ImagePathRefused:  # refused per item (recorded as a failure), not a missing file
            return False

    missing = [r for r in rows if absent(r)]
    if missing:
        ex = "; ".join(f"id {r.id}: {r.image}" for r in missing[:3])
        raise PreselError(f"{len(missing)} selected image(s) not found under the image root {root} (e.g. {ex}); "
                          "pass --image-root (the folder image paths are relative to) or --pool <manifest>")


def redact(text: str, secret: str | None) -> str:
    """``text`` with the API key cut out (a server error body may echo the request headers)."""
    if not secret or not text:
        return text
    return text.replace(secret, "[api key redacted]")


def image_file(row: SelectionRow, root: Path) -> str:
    """Where to read the row's image: a path (inside ``root``, symlinks resolved), URL, or bytes / tar-member
    locator (raises :class:`presel.io.paths.ImagePathRefused` for a path that leaves the image root)."""
    from presel.io.sources import locate

    return locate(row.image, root)


def upload_file(row: SelectionRow, root: Path) -> str:
    """The row's image locator as it may leave the machine: inside the image root and decoding as an image
    (raises :class:`presel.io.paths.ImagePathRefused` otherwise)."""
    from presel.io.sources import check_decodes

    loc = image_file(row, root)
    check_decodes(loc)
    return loc


def refuse_unsafe(rows: Sequence[SelectionRow], root: Path, out: Path, *, decode: bool = True) -> list[SelectionRow]:
    """``rows`` without those whose image may not be sent (outside the root, or not an image); each of those
    is recorded in ``failures.jsonl`` with the reason, kind ``image``."""
    from presel.io.paths import ImagePathRefused

    keep, refused = [], []
    for r in rows:
        try:
            upload_file(r, root) if decode else image_file(r, root)
            keep.append(r)
        except ImagePathRefused as e:
            refused.append({"id": r.id, "image": r.image, "task": r.task, "kind": "image",
                            "error": f"refused image {r.image}: {e.reason}",
                            "usage": {"requests": 0, "tokens_in": 0, "tokens_out": 0}})
    if refused:
        store = ResultsStore(out)
        store.append(failures=refused)
        store.close()
    return keep


# --------------------------------------------------------------------------- annotations


@dataclass
class Annotations:
    """Annotated records (LLaVA JSON/JSONL or messages), indexed by id and by normalised image path."""

    path: Path
    records: list[dict[str, Any]]
    by_id: dict[str, list[int]] = field(default_factory=dict)
    by_image: dict[str, list[int]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count (text-only, multi-image)

    def lookup(self, row: SelectionRow, match: str = "auto") -> tuple[list[dict[str, Any]], str | None]:
        """Records for ``row`` and, when none, why. By id: the records with that id. By image: the records of
        that image in the row's task (records without a task field count for every task). ``auto``: id, then image."""
        if match not in MATCHES:
            raise PreselError(f"match={match!r} must be one of {', '.join(MATCHES)}")
        if match in ("id", "auto"):
            hits = self.by_id.get(row.id)
            if hits:
                return [self.records[i] for i in hits], None
            if match == "id":
                return [], f"no annotation with id '{row.id}' in {self.path}"
        hits = [self.records[i] for i in self.by_image.get(image_key(row.image), [])]
        if not hits:
            return [], f"no annotation for image '{row.image}' (id '{row.id}') in {self.path}"
        same = [r for r in hits if r.get("task") == row.task]
        if same:
            return same, None
        untasked = [r for r in hits if r.get("task") is None]
        if untasked:
            return untasked, None
        tasks = sorted({str(r.get("task")) for r in hits})
        return [], (f"image '{row.image}' (id '{row.id}') is annotated in {self.path} only for task(s) "
                    f"{', '.join(tasks)}, not for '{row.task}'")


def load_annotations(path: str | os.PathLike) -> Annotations:
    """Read LLaVA JSON/JSONL (``id``, ``image``, ``conversations``; optional ``task``/``task_name``), or
    ShareGPT ``messages``/``images`` records. Duplicate ids are allowed (LLaVA-665K has some); records
    without an image or with several images are counted and left out."""
    from presel.io.export import normalize_turns, to_llava_record
    from presel.io.manifest import iter_raw_records

    path = Path(path)
    if not path.is_file():
        raise PreselError(f"{path}: annotations file not found; pass an annotated LLaVA JSON/JSONL")
    ann = Annotations(path, [])
    for line, rec in iter_raw_records(path):
        where = f"{path} line {line}"
        img = rec.get("image", rec.get("images"))
        if isinstance(img, list):
            if len(img) > 1:
                ann.skipped["multi-image"] = ann.skipped.get("multi-image", 0) + 1
                continue
            img = img[0] if img else None
        if img in (None, ""):
            ann.skipped["text-only"] = ann.skipped.get("text-only", 0) + 1
            continue
        conv = rec.get("conversations", rec.get("messages"))
        if conv is None:
            raise PreselError(f"{where}: record '{rec.get('id')}' has no 'conversations'; annotations need them")
        rid = rec.get("id")
        if rid in (None, ""):
            raise PreselError(f"{where}: record without 'id'; give every annotation an id")
        task = rec.get("task", rec.get("task_name"))
        r = {"id": str(rid), "image": str(img), "conversations": normalize_turns(conv, where=where),
             "task": None if task in (None, "") else str(task)}
        r = to_llava_record(r)
        r.setdefault("task", None)
        i = len(ann.records)
        ann.records.append(r)
        ann.by_id.setdefault(r["id"], []).append(i)
        ann.by_image.setdefault(image_key(r["image"]), []).append(i)
    return ann


def records_for_row(row: SelectionRow, anns: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Training records for ``row`` from its matched annotations (validated; invalid ones reported)."""
    from presel.generate.parse import ParseError, validate_conversation

    out, problems = [], []
    for a in anns:
        try:
            conv = validate_conversation(a["conversations"])
        except ParseError as e:
            problems.append(f"annotation '{a['id']}': {e}")
            continue
        rid = row.id if not out else f"{row.id}#{len(out)}"
        out.append({"id": rid, "image": row.image, "task": row.task, "conversations": conv})
    return out, problems


# --------------------------------------------------------------------------- results files


class ResultsStore:
    """``results.jsonl`` and ``failures.jsonl`` of an output directory, append-only, fsynced per line."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.results_path = self.out / "results.jsonl"
        self.failures_path = self.out / "failures.jsonl"
        self._lock = threading.Lock()
        self._files: dict[Path, Any] = {}

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):  # torn last line from a kill: cut it off
            cut = data.rfind(b"\n") + 1
            with open(path, "r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
            data = data[:cut]
        out = []
        for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise PreselError(f"{path} line {n}: not valid JSON; the file was edited or corrupted; "
                                  "remove that line (its item is redone) or start over with --overwrite") from None
        return out

    def load(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return self._read(self.results_path), self._read(self.failures_path)

    def append(self, results: Sequence[dict[str, Any]] = (), failures: Sequence[dict[str, Any]] = ()) -> None:
        """Append lines and fsync before returning (group commit: one fsync per file for all lines given)."""
        with self._lock:
            for path, rows in ((self.results_path, results), (self.failures_path, failures)):
                if not rows:
                    continue
                f = self._files.get(path)
                if f is None:
                    f = self._files[path] = open(path, "a", encoding="utf-8")
                f.write("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
                f.flush()
                os.fsync(f.fileno())

    def append_result(self, row: dict[str, Any]) -> None:
        self.append(results=[row])

    def append_failure(self, row: dict[str, Any]) -> None:
        self.append(failures=[row])

    def close(self) -> None:
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()


def state_of(results: list[dict[str, Any]], failures: list[dict[str, Any]]) -> tuple[dict[str, dict], dict[str, dict]]:
    """``done`` (id -> first result line) and ``failed`` (id -> last failure line, for ids without a result)."""
    done: dict[str, dict] = {}
    for r in results:
        done.setdefault(str(r["id"]), r)
    failed: dict[str, dict] = {}
    for f in failures:
        if str(f["id"]) not in done:
            failed[str(f["id"])] = f
    return done, failed


# --------------------------------------------------------------------------- train.json


def reference_records(rows: list[SelectionRow], ref: Annotations | None, match: str = "auto"
                      ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Training records of the reference rows from their annotations, and a summary (missing ones listed)."""
    refs = [r for r in rows if r.source == "reference"]
    info: dict[str, Any] = {"rows": len(refs), "annotated": 0, "records": 0, "missing": 0, "missing_ids": [],
                            "invalid": []}
    out: list[dict[str, Any]] = []
    if ref is None:
        if refs:
            info["note"] = ("reference rows are not in train.json: pass --reference-annotations (the annotated "
                            "reference set, LLaVA JSON) to include them")
        return out, info
    info["annotations"] = str(ref.path)
    for row in refs:
        anns, why = ref.lookup(row, match)
        recs, problems = records_for_row(row, anns)
        info["invalid"].extend(problems[:5])
        if recs:
            info["annotated"] += 1
            info["records"] += len(recs)
            out.extend(recs)
        else:
            info["missing"] += 1
            if len(info["missing_ids"]) < 20:
                info["missing_ids"].append(row.id)
    info["invalid"] = info["invalid"][:20]
    return out, info


def write_train(out: Path, records: list[dict[str, Any]], fmt: str = "llava", root: Path | None = None) -> list[str]:
    """``train.json`` (LLaVA; system turns merged into the first human turn) always; ``train_sharegpt.json``
    too with ``fmt="sharegpt"``, a Hugging Face dataset ``train_hf/`` (images from ``root``) with
    ``fmt="hf-datasets"``. Returns the names written."""
    from presel.io.export import write_hf_dataset, write_llava_json, write_sharegpt_json

    write_llava_json(out / "train.json", records)
    names = ["train.json"]
    if fmt == "sharegpt":
        write_sharegpt_json(out / "train_sharegpt.json", records)
        names.append("train_sharegpt.json")
    if fmt == "hf-datasets":
        if root is None:
            raise PreselError("format=hf-datasets needs the image root; export with presel prepare export --to "
                              "hf-datasets --train OUT/train.json --image-root IMAGE_ROOT")
        write_hf_dataset(out / "train_hf", records, root)
        names.append("train_hf")
    return names
