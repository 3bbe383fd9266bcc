"""Step 1.3-1.4 of PreSel: instruction relevance scores (IRS) of the annotated reference samples.

For every sample ``(I, Q, R)``: ``loss_q = L(R|Q,I)`` and ``loss_noq = L(R|I)``, the mean next-token
cross-entropy over the response tokens only (every assistant reply plus its end-of-turn token; for several
turns the mean runs over all replies together); the no-question pass has an image-only user turn and all
replies joined with one space. ``irs = loss_q / loss_noq``.

Rendering is :mod:`presel.vlm.render` (the model's own processor and chat template, so any
``AutoModelForImageTextToText`` works). Each image is decoded once for both passes. Samples are scored in
right-padded batches (fp32 on CPU, bf16 on CUDA by default); results equal unbatched scoring.

Output ``out/``: ``irs.parquet`` (``id``, ``task``, ``loss_q``, ``loss_noq``, ``irs``,
``n_response_tokens``, in input order), ``rejected.jsonl`` (``id``, ``task``, ``line``, ``reason``: empty
conversation, no response tokens, unreadable image, ...; never NaN in the table), ``summary.json``,
``config.json``. Resumable: per-batch results are appended and fsynced to ``out/shards/*.jsonl``; a rerun
skips every finished sample. Scale-out: ``executor="ray"`` runs one model per Ray actor (one GPU each on a
GPU cluster) over the same batches.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Any, ClassVar

from presel.config import identity, neutral, same_identity
from presel.errors import PreselError

EXECUTORS = ("local", "ray")
STATE_FILE = "score_state.json"
SHARDS = "shards"
COLUMNS = ("id", "task", "loss_q", "loss_noq", "irs", "n_response_tokens")


@dataclass(frozen=True)
class ScoreConfig:
    """model: directory, hub id or offline name (llava-small, tiny-llava) of the reference model;
    batch_size: samples per forward pass (each pass of the two); dtype: auto (bf16 on CUDA, fp32 on CPU),
    fp32, bf16, fp16; device: auto, cpu, cuda, cuda:N; max_length: truncate rendered samples to this many
    tokens (None: no limit); seed: torch seed (scoring itself is deterministic); image_root / default_task /
    id_field / task_field: how to read the data file; executor: local or ray; ray_actors: Ray actors, one
    model each (default: one per GPU, else 1; ``workers`` is its deprecated old name); ray_address: an existing Ray cluster; num_workers: processes that decode and
    render batches ahead of the model (0: in the main process; None: 0 on CPU, up to 4 with a GPU); prefetch: with num_workers=0, render the
    next batch in a background thread while the model runs the current one; chat_format: ``llava-v1`` (LLaVA-1.5's
    conversation format, as the authors score) or None (the model's own chat template; ``llava-v1`` under
    ``protocol: official``)."""

    @property
    def effective_chat_format(self) -> str | None:
        from presel.protocol import default_chat_format

        return default_chat_format(self.protocol, self.chat_format)

    model: str = "llava-small"
    batch_size: int = neutral(8)
    dtype: str = "auto"
    device: str = neutral("auto")
    max_length: int | None = None
    seed: int = neutral(0)  # scoring is deterministic
    image_root: str | None = None
    default_task: str | None = None
    id_field: str = "id"
    task_field: str | None = None
    executor: str = neutral("local")
    ray_actors: int | None = neutral(None)
    ray_address: str | None = neutral(None)
    num_workers: int | None = neutral(None)
    prefetch: bool = neutral(True)
    chat_format: str | None = None  # llava-v1, or None: the model's own chat template
    protocol: str = "paper"  # official: chat_format defaults to llava-v1 (the authors' scoring)
    ray_progress_timeout: float = neutral(600.0)
    workers: InitVar[int | None] = None  # deprecated name of ray_actors
    render_workers: InitVar[int | None] = None  # deprecated name of num_workers
    DEPRECATED: ClassVar[dict[str, str]] = {"workers": "ray_actors", "render_workers": "num_workers"}

    def __post_init__(self, workers: int | None = None, render_workers: int | None = None) -> None:
        if render_workers is not None:
            if isinstance(render_workers, bool) or not isinstance(render_workers, int) or render_workers < 0:
                raise PreselError(f"render_workers={render_workers!r} (deprecated name of num_workers) must be an "
                                  "integer >= 0 or null (auto)")
            object.__setattr__(self, "num_workers", render_workers)
        from presel.devices import DTYPES
        from presel.protocol import check_protocol
        from presel.vlm.render import check_chat_format

        check_protocol(self.protocol)
        check_chat_format(self.chat_format)

        t = self.ray_progress_timeout
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise PreselError(f"ray_progress_timeout={t!r} must be a number of seconds > 0")

        if not isinstance(self.model, (str, os.PathLike)) or not str(self.model):
            raise PreselError(f"model={self.model!r} must be a model directory, hub id or offline name (llava-small)")
        object.__setattr__(self, "model", str(self.model))
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise PreselError(f"batch_size={self.batch_size!r} must be an integer >= 1")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise PreselError(f"dtype={self.dtype!r} must be one of auto, {', '.join(sorted(DTYPES))}")
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise PreselError(f"device={self.device!r} must be auto, cpu, cuda or cuda:N")
        if self.max_length is not None and (isinstance(self.max_length, bool) or not isinstance(self.max_length, int)
                                            or self.max_length < 2):
            raise PreselError(f"max_length={self.max_length!r} must be an integer >= 2 or null (no limit)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise PreselError(f"seed={self.seed!r} must be an integer")
        if self.executor not in EXECUTORS:
            raise PreselError(f"executor={self.executor!r} must be one of {', '.join(EXECUTORS)}")
        if self.num_workers is not None and (isinstance(self.num_workers, bool)
                                             or not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise PreselError(f"num_workers={self.num_workers!r} must be an integer >= 0 or null (auto)")
        if workers is not None:
            if self.ray_actors is not None and self.ray_actors != workers:
                raise PreselError(f"workers={workers!r} and ray_actors={self.ray_actors!r} disagree; workers is the "
                                  "deprecated name of ray_actors, keep only ray_actors")
            if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
                raise PreselError(f"workers={workers!r} (deprecated name of ray_actors) must be an integer >= 1 or "
                                  "null (one per GPU)")
            object.__setattr__(self, "ray_actors", workers)
        if self.ray_actors is not None and (isinstance(self.ray_actors, bool) or not isinstance(self.ray_actors, int)
                                            or self.ray_actors < 1):
            raise PreselError(f"ray_actors={self.ray_actors!r} must be an integer >= 1 or null (one per GPU)")


# ---------------------------------------------------------------------------------------------------------
# one model, batches of samples


def conversation_problem(turns: Any) -> str | None:
    """Why a conversation cannot be scored, or None."""
    if not turns:
        return "empty conversation"
    if not any(t.role == "assistant" and t.text.strip() for t in turns):
        return "no response tokens: no non-empty assistant reply"
    return None


def _accepts(model: Any, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class Scorer:
    """Holds one model and scores batches of items ``{"id", "task", "path", "turns": [[role, text], ...]}``.

    :meth:`score` returns one result per item, in order: ``{"id", "task", "loss_q", "loss_noq", "irs",
    "n_response_tokens"}`` or ``{"id", "task", "reason"}`` for a rejected item.
    """

    def __init__(self, model: str, *, dtype: str = "auto", device: str = "auto", max_length: int | None = None,
                 seed: int = 0, loaded: tuple[Any, Any] | None = None, logits_to_keep: bool = True,
                 chat_format: str | None = None):
        import torch

        from presel.vlm.load import load_vlm
        from presel.vlm.render import with_chat_format

        torch.manual_seed(seed)
        self.model, self.processor = loaded if loaded is not None else load_vlm(model, dtype=dtype, device=device)
        self.processor = with_chat_format(self.processor, chat_format)
        self.model.eval()
        self.max_length = max_length
        tok = getattr(self.processor, "tokenizer", self.processor)
        pid = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pid is None:
            raise PreselError(f"model '{model}': its tokenizer has neither a pad nor an eos token; set one")
        self.pad_id = int(pid)
        self.device = next(self.model.parameters()).device
        self.dtype = next(self.model.parameters()).dtype
        self._logits_to_keep = logits_to_keep and _accepts(self.model, "logits_to_keep")

    # -- rendering (CPU; may run in a background thread)
    def prepare(self, items: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Any, Any] | dict[str, Any]]:
        """Per item: ``(item, encoded_q, encoded_noq)`` or a rejection ``{"id", "task", "reason"}``.
        The image is decoded once and rendered for both passes."""
        from presel.features.images import ImageRejected
        from presel.records import Turn
        from presel.vlm.render import encode_pairs, load_image_for

        out: list[Any] = [None] * len(items)
        todo: list[tuple[int, Any, Any]] = []
        for i, it in enumerate(items):
            turns = tuple(Turn(r, t) for r, t in it["turns"] or ())
            problem = conversation_problem(turns)
            if problem is None:
                try:
                    if it.get("refused"):
                        raise ImageRejected(it["refused"])
                    todo.append((i, load_image_for(self.processor, it["path"]), turns))
                except ImageRejected as e:
                    problem = f"unreadable image: {e.reason}"
            if problem is not None:
                out[i] = {"id": it["id"], "task": it["task"], "reason": problem}
        encoded = encode_pairs(self.processor, [x[1] for x in todo], [x[2] for x in todo], max_length=self.max_length)
        for (i, _, _), enc in zip(todo, encoded):
            it = items[i]
            if isinstance(enc, PreselError):
                out[i] = {"id": it["id"], "task": it["task"], "reason": f"cannot render: {enc}"}
            elif enc[0].n_response_tokens == 0 or enc[1].n_response_tokens == 0:
                out[i] = {"id": it["id"], "task": it["task"], "reason": "no response tokens after rendering" + (
                    f" (max_length={self.max_length} cut them off)" if self.max_length else "")}
            else:
                out[i] = (it, enc[0], enc[1])
        return out

    # -- model (device)
    def losses(self, encoded: list[Any]) -> tuple[list[float], list[int]]:
        """Mean response loss and response token count of each encoded sample, in one padded forward pass.

        The language-model head runs only at the positions that predict a response token of some sample of
        the batch (``logits_to_keep``) when the model supports it; the loss is the same."""
        import torch
        import torch.nn.functional as F

        from presel.vlm.render import collate, response_loss

        b = collate(encoded, self.pad_id, padding_side="right")
        extras = {k: (v.to(self.device, dtype=self.dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in b["extras"].items()}
        labels = b["labels"]
        kw: dict[str, Any] = {}
        keep = None
        if self._logits_to_keep:
            keep = (labels[:, 1:] != -100).any(dim=0).nonzero()[:, 0]
            if len(keep):
                kw["logits_to_keep"] = keep.to(self.device)
        with torch.inference_mode():
            out = self.model(input_ids=b["input_ids"].to(self.device),
                             attention_mask=b["attention_mask"].to(self.device), use_cache=False, **extras, **kw)
            if "logits_to_keep" in kw:
                target = labels[:, keep + 1].to(self.device)
                mask = target != -100
                nll = F.cross_entropy(out.logits[mask].float(), target[mask], reduction="none")
                sums = torch.zeros(len(encoded), dtype=torch.float32, device=nll.device).index_add(
                    0, mask.nonzero()[:, 0], nll)
                counts = mask.sum(dim=1)
            else:
                sums, counts = response_loss(out.logits, labels)
        sums, counts = sums.double().cpu().tolist(), counts.cpu().tolist()
        return [s / n if n else float("nan") for s, n in zip(sums, counts)], [int(n) for n in counts]

    def finish(self, prepared: list[Any]) -> list[dict[str, Any]]:
        ok = [p for p in prepared if isinstance(p, tuple)]
        results: dict[int, dict[str, Any]] = {}
        if ok:
            lq, nq = self.losses([p[1] for p in ok])
            ln, _ = self.losses([p[2] for p in ok])
            for (it, eq, en), a, b, n in zip(ok, lq, ln, nq):
                if not (math.isfinite(a) and math.isfinite(b)):
                    results[id(it)] = {"id": it["id"], "task": it["task"], "reason": "non-finite loss"}
                elif b <= 0.0:
                    results[id(it)] = {"id": it["id"], "task": it["task"],
                                       "reason": "zero loss without the question: IRS undefined"}
                else:
                    results[id(it)] = {"id": it["id"], "task": it["task"], "loss_q": a, "loss_noq": b, "irs": a / b,
                                       "n_response_tokens": n}
                    if not (eq.end_of_turn and en.end_of_turn):
                        results[id(it)]["no_end_of_turn"] = True
        return [results[id(p[0])] if isinstance(p, tuple) else p for p in prepared]

    def score(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.finish(self.prepare(items))


def plan_batches(items: list[dict[str, Any]], batch_size: int) -> list[list[dict[str, Any]]]:
    """Batches of similar conversation length (less padding): items sorted by their text length (stable),
    then cut into ``batch_size`` chunks. Deterministic; results do not depend on the grouping."""
    order = sorted(range(len(items)), key=lambda i: sum(len(t) for _, t in items[i]["turns"] or ()))
    ordered = [items[i] for i in order]
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


class _Rendered:
    """Map-style dataset: batch ``i`` -> ``scorer.prepare(batches[i])`` (run in DataLoader worker processes)."""

    def __init__(self, scorer: Scorer, batches: list[list[dict[str, Any]]]):
        self.scorer, self.batches = scorer, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Any:
        return self.scorer.prepare(self.batches[i])


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def score_stream(scorer: Scorer, batches: Iterable[list[dict[str, Any]]], *, prefetch: bool = True,
                 render_workers: int = 0) -> Iterator[list[dict[str, Any]]]:
    """Score ``batches`` in order. ``render_workers > 0``: worker processes decode and render batches ahead
    of the model; else ``prefetch`` renders batch ``k+1`` in a background thread while the model runs ``k``."""
    if render_workers > 0:
        import torch

        batches = list(batches)
        loader = torch.utils.data.DataLoader(_Rendered(scorer, batches), batch_size=None, shuffle=False,
                                             num_workers=min(render_workers, max(1, len(batches))),
                                             collate_fn=lambda x: x, prefetch_factor=2, worker_init_fn=_worker_init,
                                             multiprocessing_context="fork")
        for prepared in loader:
            yield scorer.finish(prepared)
        return
    if not prefetch:
        for items in batches:
            yield scorer.score(items)
        return
    from concurrent.futures import ThreadPoolExecutor

    it = iter(batches)
    with ThreadPoolExecutor(max_workers=1) as ex:
        nxt = next(it, None)
        fut = ex.submit(scorer.prepare, nxt) if nxt is not None else None
        while fut is not None:
            prepared = fut.result()
            nxt = next(it, None)
            fut = ex.submit(scorer.prepare, nxt) if nxt is not None else None
            yield scorer.finish(prepared)


# ---------------------------------------------------------------------------------------------------------
# Ray scale-out


class _RayScorer:
    """Ray Data actor: one model per actor; one row = one batch (items as JSON)."""

    def __init__(self, cfg: dict[str, Any]):
        self.scorer = Scorer(cfg["model"], dtype=cfg["dtype"], device=cfg["device"], max_length=cfg["max_length"],
                             seed=cfg["seed"], chat_format=cfg.get("chat_format"))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        out = [json.dumps(self.scorer.score(json.loads(items))) for items in batch["items"]]
        return {"batch": batch["batch"], "results": np.array(out, dtype=object)}


def _ray_stream(batches: list[list[dict[str, Any]]], config: ScoreConfig, model: str
                ) -> Iterator[list[dict[str, Any]]]:
    import ray

    started = False
    if not ray.is_initialized():
        from presel.executors.ray_guard import check_reachable

        check_reachable(config.ray_address, config.ray_progress_timeout)  # nothing listening: one error, no wait
        ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        started = True
    try:
        from presel.executors.ray_guard import check_resources, with_progress_timeout

        resources = ray.cluster_resources()
        gpu = config.device.startswith("cuda") or (config.device == "auto" and resources.get("GPU", 0) > 0)
        n_gpus = int(resources.get("GPU", 0))
        actors = config.ray_actors or (max(1, n_gpus) if gpu else 1)
        check_resources(resources, actors=actors, actor_cpus=0 if gpu else 1, actor_gpus=1 if gpu else 0,
                        decode_cpus=0, actors_flag="--ray-actors")
        cfg = {"model": model, "dtype": config.dtype, "device": "cuda" if gpu else "cpu",
               "max_length": config.max_length, "seed": config.seed, "chat_format": config.effective_chat_format}
        rows = [{"batch": i, "items": json.dumps(b)} for i, b in enumerate(batches)]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * actors)))
        ds = ds.map_batches(_RayScorer, fn_constructor_kwargs={"cfg": cfg}, batch_size=1, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=1 if gpu else 0,
                            num_cpus=0 if gpu else 1)
        for row in with_progress_timeout(ds.iter_rows(), config.ray_progress_timeout, "score"):
            yield json.loads(row["results"])
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------------------
# resumable driver


def _fingerprint(data_path: Path, config: ScoreConfig, model: str) -> dict[str, Any]:
    from presel.io.digest import file_sha256

    return {"data_sha256": file_sha256(data_path), **score_identity(config, model)}


def score_identity(config: ScoreConfig, model: str) -> dict[str, Any]:
    """What the scores depend on: every result setting of ``config`` (:func:`presel.config.identity`), the model
    as :func:`_model_identity` names it and the chat format it resolves to."""
    return identity(config, model=model, chat_format=config.effective_chat_format)


def _model_identity(model: str) -> str:
    """The model string as given, plus the config.json hash of a local directory (a retrained model with the
    same path is a different model)."""
    import hashlib

    p = Path(model)
    if (p / "config.json").exists():
        weights = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin"))
        stat = [(w.name, w.stat().st_size, int(w.stat().st_mtime)) for w in weights]
        return f"{model}#{hashlib.sha256(json.dumps(stat).encode()).hexdigest()[:16]}"
    return model


def _checked_path(pool: Any, rec: Any) -> dict[str, Any]:
    """``{"path": <locator>}``, or ``{"path": None, "refused": reason}`` for an image path outside the image root."""
    from presel.io.paths import ImagePathRefused

    try:
        return {"path": pool.locator(rec)}
    except ImagePathRefused as e:
        return {"path": None, "refused": e.reason}


def read_shards(shard_dir: Path) -> dict[str, dict[str, Any]]:
    """Finished results by id from the shard files (a torn last line of a crashed run is ignored)."""
    done: dict[str, dict[str, Any]] = {}
    if not shard_dir.is_dir():
        return done
    for f in sorted(shard_dir.glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "id" in row:
                done[str(row["id"])] = row
    return done


def score_to_dir(data_path: str | os.PathLike, out: str | os.PathLike, config: ScoreConfig | None = None, *,
                 overwrite: bool = False, progress: bool = True,
                 on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Score every sample of the annotated reference file ``data_path`` (LLaVA JSON/JSONL or any manifest
    :func:`presel.io.manifest.read_pool` reads, with a task per record) into ``out/`` (see module doc).

    Resumes: finished samples in ``out/shards`` are skipped when the data file and model settings are the
    same; other settings are an error unless ``overwrite``. ``on_batch(n_done)`` is called after each
    written batch. Returns the summary.
    """
    from presel.cache import resolve_model
    from presel.config import resolved_config
    from presel.io.atomic import write_json, write_parquet
    from presel.io.manifest import read_pool
    from presel.io.owned import remove_owned

    config = config or ScoreConfig()
    data_path, out = Path(data_path), Path(out)
    pool = read_pool(data_path, image_root=config.image_root, default_task=config.default_task, flag="--data",
                     task_fix="give each record a task field (or name it with --task-field), or pass --default-task",
                     id_field=config.id_field, task_field=config.task_field)
    model = resolve_model(config.model)
    if out.exists() and not out.is_dir():
        raise PreselError(f"--out {out} exists and is not a directory; choose another path")
    state_path = out / STATE_FILE
    fingerprint = _fingerprint(data_path, config, _model_identity(model))
    if out.is_dir() and any(out.iterdir()):
        old = None
        if state_path.exists():
            try:
                old = json.loads(state_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                old = None
        if not same_identity(old, fingerprint, required=("data_sha256", "model")):
            if not overwrite:
                what = ("holds IRS results of other settings ("
                        + ", ".join(sorted(k for k in {*fingerprint, *(old or {})} if (old or {}).get(k) != fingerprint.get(k)))
                        + " differ)"
                        if old is not None else "already exists and is not a presel score output")
                raise PreselError(f"--out {out} {what}; rerun with the same settings to resume, choose another "
                                  "--out, or pass --overwrite to start over")
            remove_owned(out, only=(STATE_FILE, "config.json"))
    shard_dir = out / SHARDS
    done = read_shards(shard_dir)
    todo = [r for r in pool.records if r.id not in done]
    items = [{"id": r.id, "task": r.task, **_checked_path(pool, r),
              "turns": [[t.role, t.text] for t in r.conversations] if r.conversations else []} for r in todo]
    batches = plan_batches(items, config.batch_size)

    t0 = time.perf_counter()
    if batches:
        if config.executor == "ray":
            stream = _ray_stream(batches, config, model)
        else:
            scorer = Scorer(model, dtype=config.dtype, device=config.device, max_length=config.max_length,
                            seed=config.seed, chat_format=config.effective_chat_format)
            workers = config.num_workers
            if workers is None:
                workers = 0 if scorer.device.type == "cpu" else min(4, max(1, (os.cpu_count() or 2) // 2))
            stream = score_stream(scorer, batches, prefetch=config.prefetch, render_workers=workers)
        n_files = len(list(shard_dir.glob("*.jsonl"))) if shard_dir.is_dir() else 0
        shard = shard_dir / f"part-{n_files:05d}.jsonl"
        n_done = len(done)
        warned = False
        with contextlib.ExitStack() as stack:
            f = None
            for results in stream:
                if f is None:  # nothing is recorded before the first result exists (a failed start leaves no state)
                    shard_dir.mkdir(parents=True, exist_ok=True)
                    write_json(state_path, fingerprint)
                    f = stack.enter_context(open(shard, "a", encoding="utf-8"))
                for r in results:
                    if r.get("no_end_of_turn") and not warned:
                        warned = True
                        print(f"presel score: warning: the rendered labels of sample '{r['id']}' hold no end-of-turn "
                              "token after a reply (the chat template writes none), so L(R|Q,I) and L(R|I) miss it; "
                              "pass --chat-format llava-v1 for LLaVA-1.5 models (the authors' format)",
                              file=sys.stderr, flush=True)
                    f.write(json.dumps(r, sort_keys=True) + "\n")
                    done[str(r["id"])] = r
                f.flush()
                os.fsync(f.fileno())
                n_done += len(results)
                if progress:
                    print(f"\rscore: {n_done}/{len(pool.records)} samples", end="", file=sys.stderr, flush=True)
                if on_batch is not None:
                    on_batch(n_done)
        if progress:
            print(file=sys.stderr)
    seconds = time.perf_counter() - t0
    if not state_path.is_file():
        write_json(state_path, fingerprint)

    scored = [done[r.id] for r in pool.records if "irs" in done[r.id]]
    line = {r.id: r.line for r in pool.records}
    rejected = [{"id": done[r.id]["id"], "task": done[r.id]["task"], "line": line[r.id], "reason": done[r.id]["reason"]}
                for r in pool.records if "irs" not in done[r.id]]
    import pyarrow as pa

    table = pa.table({
        "id": pa.array([r["id"] for r in scored], pa.string()),
        "task": pa.array([r["task"] for r in scored], pa.string()),
        "loss_q": pa.array([float(r["loss_q"]) for r in scored], pa.float64()),
        "loss_noq": pa.array([float(r["loss_noq"]) for r in scored], pa.float64()),
        "irs": pa.array([float(r["irs"]) for r in scored], pa.float64()),
        "n_response_tokens": pa.array([int(r["n_response_tokens"]) for r in scored], pa.int64()),
    })
    tasks: dict[str, dict[str, Any]] = {}
    for t in pool.tasks:
        vals = [r["irs"] for r in scored if r["task"] == t]
        tasks[t] = {"scored": len(vals), "rejected": sum(1 for r in rejected if r["task"] == t),
                    "mean_irs": sum(vals) / len(vals) if vals else None}
    summary = {"samples": len(pool.records), "scored": len(scored), "rejected": len(rejected),
               "tasks": tasks, "model": config.model, "scored_this_run": len(items),
               "seconds_this_run": round(seconds, 3),
               "samples_per_second_this_run": round(len(items) / seconds, 3) if items and seconds > 0 else None}
    if config.effective_chat_format:
        summary["chat_format"] = config.effective_chat_format
    no_eot = sum(1 for r in scored if r.get("no_end_of_turn"))
    if no_eot:
        summary["no_end_of_turn"] = no_eot  # samples whose labels hold no end-of-turn token (see the warning)
    from presel.io.atomic import write_jsonl

    write_parquet(out / "irs.parquet", table)
    write_jsonl(out / "rejected.jsonl", rejected)
    write_json(out / "summary.json", {k: v for k, v in summary.items() if not k.endswith("this_run")})
    write_json(out / "config.json", resolved_config("score", config, data=str(data_path), resolved_model=model))
    return summary
