"""The shard task both executors run (a leaf module: the executors and the package import it, it imports
neither)."""

from __future__ import annotations

from dataclasses import dataclass

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class ShardTask:
    index: int  # shard number in the store
    keys: tuple[str, ...]  # image keys (one per distinct content)
    paths: tuple[str, ...]  # absolute paths to read
    hashes: tuple[str, ...]  # content hashes


def batches_of(task: ShardTask, batch_size: int) -> list[list[int]]:
    """Positions of ``task`` split into batches; batches never cross shards, so results do not depend on
    which shards were already done (resume) or on the executor."""
    n = len(task.keys)
    return [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
