"""Ray executor: the same extraction over a Ray cluster through Ray Data.

One Ray Data row is one planned batch (the same batches as the local executor, never crossing shards):
``map`` decodes and preprocesses the batch in CPU tasks, ``map_batches`` with an actor pool (one model
per actor; one GPU per actor on a GPU cluster) embeds it, and the driver writes each shard to the same
store as soon as all its batches are back. Because the batches are identical, the vectors are too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from presel.executors.ray_guard import check_resources, with_progress_timeout
from presel.executors.tasks import ShardTask, batches_of


def decode_batch(row: dict[str, Any], preprocess: Any, max_pixels: int) -> dict[str, Any]:
    """One planned batch -> uint8 pixels (as bytes) of its usable images + reasons for the rest."""
    from presel.executors.local import decode_one

    paths = json.loads(row["paths"])
    pos = json.loads(row["pos"])
    ok, arrs, rej, hashes = [], [], {}, {}
    for p, path in zip(pos, paths):
        _, a, why, h = decode_one(p, path, preprocess, max_pixels)
        if h is not None:
            hashes[str(p)] = h
        if a is None:
            rej[str(p)] = why
        else:
            ok.append(p)
            arrs.append(a)
    pixels = np.stack(arrs) if arrs else np.zeros((0, 1, 1, 3), np.uint8)
    return {"shard": row["shard"], "batch": row["batch"], "ok": json.dumps(ok), "rejects": json.dumps(rej),
            "hashes": json.dumps(hashes), "pixels": pixels.tobytes(), "shape": json.dumps(list(pixels.shape))}


class EmbedActor:
    """Holds one model; embeds decoded batches (Ray Data ``map_batches`` with batch_size=1 row)."""

    def __init__(self, spec: Any):
        import dataclasses

        from presel.features.backends import load_backend

        if spec.device.startswith("cuda"):  # Ray gives each actor one GPU (CUDA_VISIBLE_DEVICES): it is cuda:0 here
            spec = dataclasses.replace(spec, device="cuda")
        self.backend = load_backend(spec)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        vecs, dims = [], []
        for pix, shape in zip(batch["pixels"], batch["shape"]):
            shape = json.loads(shape)
            if shape[0]:
                a = np.frombuffer(pix, dtype=np.uint8).reshape(shape)
                v = np.ascontiguousarray(self.backend.embed(np.array(a)), dtype=np.float32)
            else:
                v = np.zeros((0, 0), np.float32)
            vecs.append(v.tobytes())
            dims.append(json.dumps(list(v.shape)))
        return {"shard": batch["shard"], "batch": batch["batch"], "ok": batch["ok"], "rejects": batch["rejects"],
                "hashes": batch["hashes"], "vectors": np.array(vecs, dtype=object), "vshape": np.array(dims, dtype=object)}


def run(tasks: list[ShardTask], spec: Any, config: Any,
        on_shard: Callable[[ShardTask, np.ndarray, list[int], dict[int, str]], None],
        progress: Any = None) -> dict[str, float]:
    """Run ``tasks`` on Ray; return timings (extract_s: submission -> last shard written)."""
    import time

    import ray

    from presel.features.backends import preprocess_for

    if not tasks:
        return {}
    started = False
    if not ray.is_initialized():
        from presel.executors.ray_guard import check_reachable

        check_reachable(config.ray_address, config.ray_progress_timeout)  # nothing listening: one error, no wait
        ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
        started = True
    t0 = time.perf_counter()
    try:
        preprocess = preprocess_for(spec)
        rows, n_batches = [], {}
        by_index = {t.index: t for t in tasks}
        for t in tasks:
            bs = batches_of(t, config.batch_size)
            n_batches[t.index] = len(bs)
            for b_i, b in enumerate(bs):
                rows.append({"shard": t.index, "batch": b_i, "pos": json.dumps(b),
                             "paths": json.dumps([t.paths[p] for p in b])})
        gpu = spec.device.startswith("cuda")
        resources = ray.cluster_resources()
        n_gpus = int(resources.get("GPU", 0))
        actors = config.ray_actors or (max(1, n_gpus) if gpu else 1)
        # actors hold their CPU (or GPU) for the whole run; the decode tasks need at least one more CPU
        check_resources(resources, actors=actors, actor_cpus=0 if gpu else 1, actor_gpus=1 if gpu else 0,
                        decode_cpus=1, actors_flag="--ray-actors")
        h, w = preprocess.out_size
        decode_mem = max(64 << 20, 4 * config.batch_size * h * w * 3)  # a batch decoded, with headroom
        ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), max(1, 4 * actors)))
        ds = ds.map(decode_batch, fn_kwargs={"preprocess": preprocess, "max_pixels": config.max_image_pixels},
                    num_cpus=1, memory=decode_mem)  # own resources: Ray runs it as tasks, not fused into the actor
        ds = ds.map_batches(EmbedActor, fn_constructor_kwargs={"spec": spec}, batch_size=1, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=1 if gpu else 0,
                            num_cpus=0 if gpu else 1)
        buf: dict[int, dict[int, tuple[list[int], np.ndarray, dict[str, str], dict[str, str]]]] = {}
        for row in with_progress_timeout(ds.iter_rows(), config.ray_progress_timeout, "embed"):
            s, b = int(row["shard"]), int(row["batch"])
            ok = json.loads(row["ok"])
            shape = json.loads(row["vshape"])
            vec = np.frombuffer(row["vectors"], dtype=np.float32).reshape(shape) if ok else None
            buf.setdefault(s, {})[b] = (ok, vec, json.loads(row["rejects"]), json.loads(row["hashes"]))
            if progress is not None:
                progress.update(len(ok) + len(buf[s][b][2]))
            if len(buf[s]) == n_batches[s]:
                parts = [buf[s][i] for i in range(n_batches[s])]
                ok_all = [p for part in parts for p in part[0]]
                vecs = [part[1] for part in parts if part[1] is not None]
                rej = {int(k): v for part in parts for k, v in part[2].items()}
                hashes = {int(k): v for part in parts for k, v in part[3].items()}
                on_shard(by_index[s], np.concatenate(vecs) if vecs else np.zeros((0, 0), np.float32), ok_all, rej,
                         hashes)
                del buf[s]
    finally:
        if started:
            ray.shutdown()
    return {"extract_s": time.perf_counter() - t0}
