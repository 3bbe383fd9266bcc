"""Executors run feature extraction over planned shards: ``local`` (DataLoader workers + one model) and
``ray`` (Ray Data: decode tasks + an actor pool, one model per actor/GPU).

Both take the same inputs and produce the same per-shard results, batch for batch, so a store written by
one equals a store written by the other:

``run(tasks, spec, config, on_shard, progress)`` where ``tasks`` is a list of ``ShardTask``; for each
finished shard the executor calls ``on_shard(task, vectors, ok, rejects)``: ``vectors`` float32
n_ok x d in the order of ``ok`` (positions into ``task.keys``), ``rejects`` {position: reason}. ``run``
returns timings: ``extract_s`` (model ready -> last shard written) and, locally, ``model_load_s``.
"""

from __future__ import annotations

from presel.executors.tasks import EXECUTORS, ShardTask, batches_of

__all__ = ["EXECUTORS", "ShardTask", "batches_of", "get_executor"]


def get_executor(name: str):
    if name == "local":
        from presel.executors.local import run
    elif name == "ray":
        from presel.executors.ray import run
    else:
        from presel.errors import PreselError

        raise PreselError(f"executor={name!r} must be one of {', '.join(EXECUTORS)}")
    return run
