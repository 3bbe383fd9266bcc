"""Typed records passed between stages.

A *record* is one line of a pool manifest (one image used by one task, possibly with a
conversation). Several records may share one image: ``image_key`` (the normalised relative
path) identifies a distinct image, which is embedded once and never selected twice unless
asked to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def image_key(image: str) -> str:
    """Normalised relative image path used to recognise one image across records."""
    key = os.path.normpath(image.replace("\\", "/")).replace("\\", "/")
    return key[2:] if key.startswith("./") else key


@dataclass(frozen=True, slots=True)
class Turn:
    role: str  # "user" or "assistant" (LLaVA "human"/"gpt" are mapped on reading)
    text: str


@dataclass(frozen=True, slots=True)
class PoolRecord:
    id: str
    image: str  # path as written in the manifest, relative to the pool's image root
    task: str
    line: int  # 1-based line (JSONL/CSV), list position + 1 (JSON), or row + 1 (Parquet)
    conversations: tuple[Turn, ...] | None = None
    extra: dict[str, Any] | None = None  # other fields of the source record, kept for round trips

    @property
    def image_key(self) -> str:
        return image_key(self.image)


@dataclass(slots=True)
class Pool:
    """A pool manifest after reading: image records plus what was left out."""

    records: list[PoolRecord]
    source: Path  # a str for a URL or a file pattern
    image_root: Path  # a str for a URL root (s3://bucket/prefix)
    text_only: int = 0  # records without an image, counted and left out
    format: str = "jsonl"
    keys: list[str] | None = field(default=None, repr=False)  # image key per record, when the reader computed them
    _by_id: dict[str, int] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def tasks(self) -> list[str]:
        """Task names in first-seen order."""
        return list(dict.fromkeys(r.task for r in self.records))

    def by_id(self) -> dict[str, int]:
        if self._by_id is None:
            self._by_id = {r.id: i for i, r in enumerate(self.records)}
        return self._by_id

    def image_keys(self) -> list[str]:
        """The image key of every record, in record order (computed once)."""
        if self.keys is None or len(self.keys) != len(self.records):
            self.keys = [r.image_key for r in self.records]
        return self.keys

    def distinct_images(self) -> list[str]:
        """Distinct image keys in first-seen order."""
        return list(dict.fromkeys(r.image_key for r in self.records))

    def locator(self, record: PoolRecord) -> str:
        """Where to read the record's image (a path or URL inside the image root, or a bytes / tar-member
        locator; see :mod:`presel.io.sources`)."""
        from presel.io.sources import locate

        return locate(record.image, self.image_root)

    def image_path(self, record: PoolRecord) -> Path:
        """The record's image file, resolved inside the image root (:func:`presel.io.paths.resolve_image`);
        raises :class:`presel.io.paths.ImagePathRefused` for a path that leaves it."""
        from presel.io.paths import resolve_image

        return resolve_image(self.image_root, record.image)
