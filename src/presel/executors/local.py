"""Local executor: a torch DataLoader whose worker processes read, decode and resize images (uint8),
while the main process normalises on the device and runs batched inference (bf16/fp16 on CUDA with
pinned memory and non-blocking copies, fp32 on CPU)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from presel.executors.tasks import ShardTask, batches_of


class DecodeDataset:
    """Index -> (index, uint8 H x W x 3 array or None, reject reason or None, content hash or None). Never raises
    for one image."""

    def __init__(self, paths: list[str], preprocess: Any, max_pixels: int):
        self.paths = paths
        self.preprocess = preprocess
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return decode_one(i, self.paths[i], self.preprocess, self.max_pixels)


def decode_one(i: int, path: str, preprocess: Any, max_pixels: int):
    """``(i, pixels or None, reject reason or None, content hash or None)``: the bytes are read once, hashed
    (so large pools are hashed here, in the workers) and decoded (``path``: any locator of presel.io.sources)."""
    import io

    from presel.errors import PreselError
    from presel.features.images import ImageRejected, load_rgb
    from presel.io.sources import hash_bytes, read_bytes

    h = None
    try:
        data = read_bytes(path)
        h = hash_bytes(data)
        return i, preprocess(load_rgb(io.BytesIO(data), max_pixels=max_pixels)), None, h
    except ImageRejected as e:
        return i, None, e.reason, h
    except PreselError:  # an unreadable shard / unreachable storage: one clear error, not a reject per image
        raise
    except Exception as e:  # noqa: BLE001 - one bad image must never stop the run
        return i, None, f"error: {type(e).__name__}: {e}", h


def collate(items):
    import torch

    ok = [(i, a) for i, a, _, _ in items if a is not None]
    idx = np.asarray([i for i, _ in ok], dtype=np.int64)
    pixels = torch.from_numpy(np.stack([a for _, a in ok])) if ok else None
    rejects = [(i, r) for i, a, r, _ in items if a is None]
    hashes = [(i, h) for i, _, _, h in items if h is not None]
    return idx, pixels, rejects, hashes


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def run(tasks: list[ShardTask], spec: Any, config: Any,
        on_shard: Callable[[ShardTask, np.ndarray, list[int], dict[int, str]], None],
        progress: Any = None) -> dict[str, float]:
    """Run ``tasks``; return timings: model_load_s, extract_s (model loaded -> last shard written)."""
    import time

    import torch
    from torch.utils.data import DataLoader

    from presel.features.backends import load_backend, preprocess_for

    if not tasks:
        return {}
    preprocess = preprocess_for(spec)
    paths: list[str] = []
    batch_index: list[list[int]] = []
    batch_task: list[int] = []
    offsets = []
    for t_i, t in enumerate(tasks):
        offsets.append(len(paths))
        paths.extend(t.paths)
        for b in batches_of(t, config.batch_size):
            batch_index.append([offsets[-1] + p for p in b])
            batch_task.append(t_i)
    n_batches = [0] * len(tasks)
    for t_i in batch_task:
        n_batches[t_i] += 1
    cuda = spec.device.startswith("cuda")
    workers = int(config.num_workers)
    loader = DataLoader(DecodeDataset(paths, preprocess, config.max_image_pixels), batch_sampler=batch_index,
                        num_workers=workers, collate_fn=collate, pin_memory=cuda,
                        worker_init_fn=_worker_init if workers else None,
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    it = iter(loader)  # workers start decoding while the model loads
    t0 = time.perf_counter()
    backend = load_backend(spec)
    t1 = time.perf_counter()
    buf: dict[int, dict[str, Any]] = {}
    try:
        for b, (idx, pixels, rejects, hashes) in enumerate(it):
            t_i = batch_task[b]
            st = buf.setdefault(t_i, {"vecs": [], "ok": [], "rej": {}, "hash": {}, "seen": 0})
            off = offsets[t_i]
            if pixels is not None:
                st["vecs"].append(backend.embed(pixels))
                st["ok"].extend(int(i) - off for i in idx)
            for i, r in rejects:
                st["rej"][int(i) - off] = r
            for i, h in hashes:
                st["hash"][int(i) - off] = h
            st["seen"] += 1
            if progress is not None:
                progress.update(len(batch_index[b]))
            if st["seen"] == n_batches[t_i]:
                vecs = np.concatenate(st["vecs"]) if st["vecs"] else np.zeros((0, 0), np.float32)
                on_shard(tasks[t_i], vecs, st["ok"], st["rej"], st["hash"])
                del buf[t_i]
    finally:
        del it
        if cuda:
            torch.cuda.empty_cache()
    return {"model_load_s": t1 - t0, "extract_s": time.perf_counter() - t1}
