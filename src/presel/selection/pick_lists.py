"""``presel select --exclude FILE / --include FILE``: images the user leaves out of, or forces into, a selection.

An id list is a text file (one id per line, as ``presel map`` exports a box or lasso selection) or a manifest
with an ``id`` field; an id is a record id or an image path of the pool, as in a reference list. Every id is
checked against the pool before anything is selected: an unknown or repeated id is an error naming the file and
the line.

- exclude: every record of those images is removed from the pool before selecting (like a rejected image);
- include: those images are selected first and count in the budget (their task's quota first).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from presel.errors import PreselError
from presel.records import Pool, image_key


@dataclass(frozen=True)
class PickList:
    """An id list resolved against a pool: per image key, the (line, id, record id) that named it."""

    path: Path
    flag: str
    images: dict[str, tuple[int, str, str]]
    ids: int

    def summary(self) -> dict:
        return {"file": str(self.path), "ids": self.ids, "images": len(self.images)}


def read_located_ids(path: str | os.PathLike, flag: str) -> list[tuple[int, str]]:
    """(line, id) of an id list: a text file (blank lines skipped) or a manifest's ``id`` field."""
    from presel.io.manifest import iter_raw_records, utf8_line

    path = Path(path)
    if not path.is_file():
        raise PreselError(f"{flag} {path}: file not found")
    out: list[tuple[int, str]] = []
    if path.suffix.lower() in (".txt", ".ids", ""):
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                s = utf8_line(raw, path, n).strip()
                if s:
                    out.append((n, s))
    else:
        for n, rec in iter_raw_records(path):
            if rec.get("id") in (None, ""):
                raise PreselError(f"{path} line {n}: missing 'id' ({flag} lists record ids or image paths)")
            out.append((n, str(rec["id"])))
    seen: dict[str, int] = {}
    for n, i in out:
        if i in seen:
            raise PreselError(f"{path} line {n}: id '{i}' is listed twice (first at line {seen[i]}); list each once in {flag}")
        seen[i] = n
    return out


def resolve_pick_list(pool: Pool, path: str | os.PathLike, flag: str) -> PickList:
    """The images of ``pool`` that the id list names; an id that is neither a record id nor an image path of the
    pool is an error naming the file and line."""
    entries = read_located_ids(path, flag)
    by_id = pool.by_id()
    first_of_key: dict[str, int] | None = None
    images: dict[str, tuple[int, str, str]] = {}
    for n, i in entries:
        j = by_id.get(i)
        if j is None:
            if first_of_key is None:
                first_of_key = {}
                for k, r in enumerate(pool.records):
                    first_of_key.setdefault(r.image_key, k)
            j = first_of_key.get(image_key(i))
        if j is None:
            raise PreselError(f"{path} line {n}: id '{i}' is not in the pool {pool.source} (neither a record id nor "
                              f"an image path); fix or remove that line of {flag}")
        rec = pool.records[j]
        images.setdefault(rec.image_key, (n, i, rec.id))
    return PickList(Path(path), flag, images, len(entries))


def check_against_reference(lists: list[PickList], reference: list[str], pool: Pool) -> None:
    """The reference images are annotated and always part of the selection: no list may name one."""
    if not reference:
        return
    by_id = pool.by_id()
    ref_keys = set()
    for rid in reference:
        j = by_id.get(str(rid))
        ref_keys.add(pool.records[j].image_key if j is not None else image_key(str(rid)))
    for pl in lists:
        for key, (n, i, _) in pl.images.items():
            if key in ref_keys:
                raise PreselError(f"{pl.path} line {n}: id '{i}' is a reference image; the reference set is always "
                                  f"part of the selection: remove that line of {pl.flag}")


def check_disjoint(exclude: PickList, include: PickList) -> None:
    for key, (n, i, _) in include.images.items():
        if key in exclude.images:
            m, j, _ = exclude.images[key]
            raise PreselError(f"{include.path} line {n}: id '{i}' is also excluded ({exclude.path} line {m}: '{j}'); "
                              "an image cannot be both excluded and included")


def drop_excluded(pool: Pool, exclude: PickList) -> tuple[Pool, dict[str, int]]:
    """``pool`` without every record of the excluded images."""
    kept = [r for r in pool.records if r.image_key not in exclude.images]
    if not kept:
        raise PreselError(f"--exclude {exclude.path}: every pool record would be excluded; nothing is left to select")
    stats = {"excluded_images": len(exclude.images), "excluded_records": len(pool.records) - len(kept)}
    return Pool(kept, pool.source, pool.image_root, text_only=pool.text_only, format=pool.format), stats


def included_records(pool: Pool, include: PickList, why_gone: dict[str, str]) -> list[str]:
    """The record ids to force in, checked against the pool that selection sees (after rejects, exclusions and
    near-duplicates); ``why_gone``: image key -> why it left the pool."""
    by_id = pool.by_id()
    present = {r.image_key: r.id for r in pool.records}
    out = []
    for key, (n, i, rid) in include.images.items():
        if rid in by_id:
            out.append(rid)
        elif key in present:
            out.append(present[key])
        else:
            raise PreselError(f"{include.path} line {n}: id '{i}' cannot be included: {why_gone.get(key, 'not in the pool')}"
                              f"; remove that line of {include.flag}")
    return out
