"""Training data for fine-tuning: LLaVA-format records -> checked samples -> encoded, batched tensors.

Rendering (chat template, image tokens, assistant-only labels) is :mod:`presel.vlm.render`, the same code
that scores samples; nothing here re-implements it. Under chat format ``llava-v1`` images are opened as LLaVA
opens them and padded to a square with the processor's mean colour (LLaVA-1.5's ``image_aspect_ratio pad``,
as the authors train); scoring keeps the processor's own resize and crop (their ``square``). This module only decides *which* records are usable
(the rest are listed in ``skipped.jsonl`` with a reason) and in *which order* they are seen: a seeded
permutation per epoch cut into global steps, so a resumed run sees exactly the batches an uninterrupted
run would.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from presel.errors import PreselError
from presel.records import Pool, PoolRecord

DEFAULT_TASK = "finetune"


@dataclass
class TrainData:
    """Usable records (in manifest order) and what was left out."""

    pool: Pool
    samples: list[PoolRecord]
    skipped: list[dict[str, Any]]  # {"id", "line", "image", "reason"}

    def __len__(self) -> int:
        return len(self.samples)


def _conversation_problem(rec: PoolRecord) -> str | None:
    turns = rec.conversations
    if not turns:
        return "no conversation"
    replies = [t for t in turns if t.role == "assistant"]
    if not replies:
        return "no assistant turn"
    if not any(t.text.strip() for t in replies):
        return "empty assistant reply"
    return None


def load_train_data(
    data: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    default_task: str | None = DEFAULT_TASK,
    id_field: str = "id",
    check_images: bool = True,
    threads: int = 4,
) -> TrainData:
    """Read a LLaVA JSON/JSONL (or any manifest :func:`presel.io.manifest.read_pool` reads) for training.

    Records without an assistant turn, and records whose image cannot be decoded (missing, empty, corrupt,
    not an image), are skipped and listed. Each distinct image is decoded once (``threads`` in parallel).
    No usable record at all is a :class:`PreselError`.
    """
    from presel.io.manifest import read_pool

    pool = read_pool(data, image_root=image_root, default_task=default_task, id_field=id_field, flag="--data",
                     task_fix="give each record a 'task' field")
    skipped: list[dict[str, Any]] = []
    candidates: list[PoolRecord] = []
    for rec in pool.records:
        problem = _conversation_problem(rec)
        if problem is None:
            candidates.append(rec)
        else:
            skipped.append({"id": rec.id, "line": rec.line, "image": rec.image, "reason": problem})
    bad_images: dict[str, str] = {}
    if check_images and candidates:
        bad_images = check_image_files(pool, candidates, threads=threads)
    samples = []
    for rec in candidates:
        reason = bad_images.get(rec.image_key)
        if reason is None:
            samples.append(rec)
        else:
            skipped.append({"id": rec.id, "line": rec.line, "image": rec.image, "reason": f"image {reason}"})
    skipped.sort(key=lambda r: r["line"])
    if not samples:
        reasons = sorted({r["reason"] for r in skipped})
        raise PreselError(f"{data}: no usable training sample ({len(skipped)} skipped: {'; '.join(reasons)[:300]}); "
                          "each record needs a readable image and at least one assistant ('gpt') turn")
    return TrainData(pool, samples, skipped)


def check_image_files(pool: Pool, records: Sequence[PoolRecord], *, threads: int = 4) -> dict[str, str]:
    """``image_key -> reason`` for the distinct images of ``records`` that cannot be decoded."""
    from concurrent.futures import ThreadPoolExecutor

    from presel.features.images import ImageRejected
    from presel.io.sources import load_image

    first: dict[str, PoolRecord] = {}
    for rec in records:
        first.setdefault(rec.image_key, rec)

    def check(rec: PoolRecord) -> str | None:
        from presel.io.paths import ImagePathRefused

        try:
            load_image(pool.locator(rec))
        except (ImageRejected, ImagePathRefused) as e:
            return e.reason
        return None

    keys = list(first)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as ex:
        results = list(ex.map(check, (first[k] for k in keys)))
    return {k: r for k, r in zip(keys, results) if r is not None}


class ConversationDataset:
    """Map-style dataset: item ``(index, masked)`` -> :class:`presel.vlm.render.Encoded`.

    ``masked=True`` gives the sample with every label set to -100 (a placeholder that keeps all DDP ranks
    running the same number of forward passes on a short last step; it adds nothing to the loss).
    """

    def __init__(self, data: TrainData, processor: Any, *, max_length: int | None = None):
        self.pool = data.pool
        self.samples = data.samples
        self.processor = processor
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, bool]) -> Any:
        from presel.features.images import ImageRejected
        from presel.vlm.render import encode_conversation, load_image_for, training_image

        index, masked = item
        rec = self.samples[index]
        path = self.pool.locator(rec)
        try:
            image = training_image(self.processor, load_image_for(self.processor, path))
        except ImageRejected as e:
            raise PreselError(f"{self.pool.source} line {rec.line} (id {rec.id}): image {path} became unusable "
                              f"during training ({e.reason}); fix or remove it and rerun (training resumes)") from None
        enc = encode_conversation(self.processor, image, rec.conversations, max_length=self.max_length)
        if masked:
            enc.labels.fill_(-100)
        return enc


@dataclass(frozen=True)
class StepPlan:
    """How the samples are cut into optimizer steps (global batch = batch_size * grad_accum * world_size)."""

    n_samples: int
    batch_size: int
    grad_accum: int
    world_size: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_samples / self.global_batch)

    def epoch_order(self, epoch: int) -> list[int]:
        """The seeded permutation of sample indices for ``epoch`` (same on every rank and every rerun)."""
        import torch

        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch * 7_919) % (2**63))
        return torch.randperm(self.n_samples, generator=g).tolist()

    def step_samples(self, step: int, order: list[int] | None = None) -> list[int]:
        """All sample indices of optimizer step ``step`` (0-based), over all ranks."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = order if order is not None else self.epoch_order(epoch)
        return order[k * self.global_batch:(k + 1) * self.global_batch]

    def micro_batches(self, step: int, rank: int = 0, order: list[int] | None = None) -> list[list[tuple[int, bool]]]:
        """The micro-batches of ``rank`` for ``step``: ``[[(index, masked), ...], ...]``.

        Micro-batch ``m`` of rank ``r`` takes slot ``m * world_size + r`` of the step's samples. A short last
        step leaves some slots empty: with one process they are dropped; with several, every rank still
        runs ``grad_accum`` micro-batches, an empty one holding a masked copy of the step's first sample.
        """
        chunk = self.step_samples(step, order)
        bs, ws = self.batch_size, self.world_size
        out = []
        for m in range(self.grad_accum):
            j = m * ws + rank
            mb = [(i, False) for i in chunk[j * bs:(j + 1) * bs]]
            if not mb:
                if ws == 1:
                    continue
                mb = [(chunk[0], True)]
            out.append(mb)
        return out

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch


class MicroBatchSampler:
    """DataLoader ``batch_sampler``: the micro-batches of ``rank`` for steps ``start .. stop-1``, in order."""

    def __init__(self, plan: StepPlan, start: int, stop: int, rank: int = 0):
        self.plan, self.start, self.stop, self.rank = plan, start, stop, rank

    def _per_step(self) -> Iterator[list[list[tuple[int, bool]]]]:
        """The micro-batches of each step ``start .. stop-1``, one list per step."""
        order: list[int] = []
        epoch = -1
        for step in range(self.start, self.stop):
            if self.plan.epoch_of(step) != epoch:
                epoch = self.plan.epoch_of(step)
                order = self.plan.epoch_order(epoch)
            yield self.plan.micro_batches(step, self.rank, order)

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        for micro in self._per_step():
            yield from micro

    def counts(self) -> Iterator[int]:
        """Number of micro-batches of each step, in the same order."""
        for micro in self._per_step():
            yield len(micro)
