"""Online generation: one chat-completions request per selected image, bounded concurrency, resumable.

Flow of :func:`generate_to_dir`:

1. read the selection; only ``source == "selected"`` rows are generated; reference rows take their
   annotations from ``reference_annotations``;
2. open ``out/`` (created if needed; an existing one must come from the same model and templates,
   else ``overwrite``); read ``results.jsonl`` / ``failures.jsonl``: finished ids are skipped, recorded
   failures too unless ``retry_failed``;
3. worker threads send the requests (retries with backoff + jitter on 429/5xx/timeouts/dropped
   connections, honouring Retry-After; a malformed answer is asked again ``parse_retries`` times);
   the main thread appends every finished item to ``results.jsonl`` or ``failures.jsonl`` (flushed,
   fsynced; items finishing together share one fsync) as it arrives, so a kill loses nothing finished
   and a rerun never duplicates;
4. after ``stop_after_failures`` failed items in a row the run stops with the last error (a dead
   server does not burn through the whole selection); 401/403/404 stop it at once;
5. when every selected row has a result or a recorded failure: ``train.json`` (reference annotations +
   generated conversations, selection order), ``summary.json`` (per-task requests, tokens, cost).
"""

from __future__ import annotations

import hashlib
import os
import queue
import random
import re
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presel.config import identity, neutral, output_format
from presel.errors import PreselError

FORMATS = ("llava", "sharegpt", "hf-datasets")


@dataclass
class GenerateConfig:
    """Settings of online (and batch) generation. Prices are per 1M tokens."""

    base_url: str | None = neutral(None)  # where requests go (the model names what answers); e.g. http://127.0.0.1:8000/v1
    model: str | None = None
    templates: str | None = None         # YAML file tried before the shipped default_templates.yaml
    api_key_env: str = neutral("OPENAI_API_KEY")  # name of the environment variable holding the key (never the key)
    concurrency: int = neutral(8)
    timeout: float = neutral(120.0)      # seconds per request
    max_retries: int = neutral(5)        # transient retries per request
    backoff_base: float = neutral(1.0)
    backoff_max: float = neutral(60.0)
    parse_retries: int = neutral(2)      # extra requests when an answer is malformed
    stop_after_failures: int = neutral(20)  # consecutive failed items that stop the run (0: never)
    price_in: float = neutral(0.0)       # cost accounting only
    price_out: float = neutral(0.0)
    format: str = output_format("llava")  # train.json always; "sharegpt" adds train_sharegpt.json, "hf-datasets" train_hf/
    max_tokens: int | None = None        # override the templates' max_tokens
    max_tokens_field: str = neutral("max_tokens")  # how the limit is spelled; "max_completion_tokens" for OpenAI models that refuse max_tokens
    temperature: float | str | None = None  # override the templates' temperature; "none": send no temperature
    image_detail: str = "auto"           # OpenAI image detail (low | high | auto); auto is not sent
    seed: int = 0                        # request seed and instruction choice (description/json kinds)
    retry_failed: bool = neutral(False)
    extra_body: dict[str, Any] = field(default_factory=dict)  # more request fields (top_p, ...)
    progress: bool = neutral(True)       # a progress bar

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise PreselError(f"concurrency={self.concurrency} must be >= 1")
        if self.timeout <= 0:
            raise PreselError(f"timeout={self.timeout} must be > 0 seconds")
        for name in ("max_retries", "parse_retries", "stop_after_failures"):
            if getattr(self, name) < 0:
                raise PreselError(f"{name}={getattr(self, name)} must be >= 0")
        if self.backoff_base < 0 or self.backoff_max < 0:
            raise PreselError(f"backoff_base={self.backoff_base}, backoff_max={self.backoff_max} must be >= 0")
        if self.price_in < 0 or self.price_out < 0:
            raise PreselError(f"price_in={self.price_in}, price_out={self.price_out} must be >= 0 (per 1M tokens)")
        if self.format not in FORMATS:
            raise PreselError(f"format={self.format!r} must be one of {', '.join(FORMATS)}")
        if self.max_tokens_field not in ("max_tokens", "max_completion_tokens"):
            raise PreselError(f"max_tokens_field={self.max_tokens_field!r} must be max_tokens or max_completion_tokens")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise PreselError(f"max_tokens={self.max_tokens} must be >= 1")
        if isinstance(self.temperature, str):
            if self.temperature.strip().lower() != "none":
                try:
                    self.temperature = float(self.temperature)
                except ValueError:
                    raise PreselError(f"temperature={self.temperature!r} must be a number in [0, 2] or none "
                                      "(send no temperature: reasoning models accept only their default)") from None
            else:
                self.temperature = "none"
        if isinstance(self.temperature, (int, float)) and not 0 <= self.temperature <= 2:
            raise PreselError(f"temperature={self.temperature} must be in [0, 2]")
        if self.image_detail not in ("auto", "low", "high"):
            raise PreselError(f"image_detail={self.image_detail!r} must be low, high or auto")
        if self.base_url is not None and not re.match(r"^https?://", self.base_url):
            raise PreselError(f"base_url={self.base_url!r} must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1)")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env or ""):
            raise PreselError(f"api_key_env={self.api_key_env!r} must be the NAME of an environment variable "
                              "(e.g. OPENAI_API_KEY), not the key itself")

    def require_online(self) -> None:
        if not self.base_url:
            raise PreselError("no --base-url: name the OpenAI-compatible server, e.g. --base-url http://127.0.0.1:8000/v1 "
                              "(or use --from-annotations for oracle mode)")
        if not self.model:
            raise PreselError("no --model: name the model the server serves, e.g. --model Qwen/Qwen2.5-VL-7B-Instruct")

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None


def request_body(cfg: GenerateConfig, tpl: Any, task: str, image_url: str, item_id: str) -> dict[str, Any]:
    """The chat-completions body of one item (same for online requests and batch files)."""
    from presel.generate.client import build_messages

    body: dict[str, Any] = dict(cfg.extra_body)
    body.update({
        "model": cfg.model,
        "messages": build_messages(tpl.render(tpl.system, task), tpl.render(tpl.user, task), image_url),
        cfg.max_tokens_field: cfg.max_tokens or tpl.max_tokens,
        "temperature": cfg.temperature if cfg.temperature is not None else tpl.temperature,
        "seed": cfg.seed,
    })
    if cfg.temperature == "none":
        del body["temperature"]
    if cfg.image_detail != "auto":
        for m in body["messages"]:
            for part in m["content"] if isinstance(m["content"], list) else []:
                if part.get("type") == "image_url":
                    part["image_url"]["detail"] = cfg.image_detail
    if tpl.json_schema is not None:
        name = re.sub(r"[^A-Za-z0-9_-]", "_", tpl.name)[:64] or "answer"
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": name, "schema": tpl.json_schema, "strict": False}}
    return body


def run_key(cfg: GenerateConfig, templates: Any, tasks: list[str]) -> str:
    """What makes results comparable across reruns: every result setting of ``cfg`` (its fields that are neither
    neutral nor format-only, see :func:`presel.config.identity`), the templates by the fingerprint of each task's
    template rather than by path."""
    import json

    ident = identity(cfg, templates={t: templates.for_task(t).fingerprint() for t in sorted(tasks)})
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def legacy_run_key(cfg: GenerateConfig, templates: Any, tasks: list[str]) -> str:
    """The run key as presel computed it before :func:`run_key` was derived from the config's fields (a folder it
    wrote still resumes)."""
    parts = [str(cfg.model), str(cfg.max_tokens), str(cfg.temperature), str(cfg.seed), repr(sorted(cfg.extra_body.items()))]
    if cfg.image_detail != "auto":
        parts.append(f"detail:{cfg.image_detail}")
    parts += [f"{t}:{templates.for_task(t).fingerprint()}" for t in sorted(tasks)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def prepare_out(out: Path, key: str, *, overwrite: bool, what: str = "generation", also: tuple[str, ...] = ()) -> None:
    """Create ``out`` or check that it holds the same run (same key, or one of the keys in ``also``: the same run
    as an older presel keyed it); ``overwrite`` starts over."""
    import json

    from presel.io.owned import remove_owned

    if out.exists() and not out.is_dir():
        raise PreselError(f"--out {out} exists and is not a directory; choose another path")
    if out.is_dir() and any(out.iterdir()):
        cfg_path = out / "config.json"
        old = None
        if cfg_path.exists():
            try:
                old = json.loads(cfg_path.read_text()).get("run_key")
            except (json.JSONDecodeError, AttributeError):
                old = None
        if overwrite:
            remove_owned(out, only=("config.json",))
        elif old != key and old not in also:
            raise PreselError(f"--out {out} holds another {what} run (different model, templates or settings, or not a "
                              "generation folder); pass --overwrite to start over or choose another --out")
    out.mkdir(parents=True, exist_ok=True)


class _DaemonPool:
    """A fixed set of daemon worker threads. Unlike ThreadPoolExecutor's, they never hold up interpreter exit,
    so Ctrl-C ends the command at once instead of waiting up to --timeout for requests in flight."""

    def __init__(self, n: int, name: str):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(n)]
        for t in self._threads:
            t.start()

    def _loop(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            fut, fn, args = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # handed to the main thread through the future
                fut.set_exception(e)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        fut: Future = Future()
        self._q.put((fut, fn, args))
        return fut

    def shutdown(self, wait: bool = True) -> None:
        for _ in self._threads:
            self._q.put(None)
        if wait:
            for t in self._threads:
                t.join()


@dataclass
class _Ctx:
    cfg: GenerateConfig
    client: Any
    policy: Any
    root: Path
    templates: dict[str, Any]  # task -> Template
    stop: threading.Event


def _work(row: Any, ctx: _Ctx) -> dict[str, Any]:
    """Generate one item; returns a result or failure line (``status``: ok | failed | interrupted | unreachable)."""
    from presel.generate.client import RequestError, TransientError, call_with_retries, image_data_url
    from presel.generate.parse import ParseError, build_conversation
    from presel.generate.store import redact, upload_file
    from presel.io.paths import ImagePathRefused

    cfg, tpl = ctx.cfg, ctx.templates[row.task]
    base = {"id": row.id, "image": row.image, "task": row.task, "template": tpl.name}
    usage = {"requests": 0, "tokens_in": 0, "tokens_out": 0}

    def fail(kind: str, error: str) -> dict[str, Any]:  # never write the API key (an error body may echo it)
        return {**base, "status": "failed", "kind": kind, "error": redact(error, cfg.api_key()), "usage": usage}

    try:
        url = image_data_url(upload_file(row, ctx.root))  # inside the image root and an image, or refused
    except ImagePathRefused as e:
        return fail("image", f"refused image {row.image}: {e.reason}")
    except OSError as e:
        return fail("image", f"cannot read image {row.image}: {e.strerror or e}")
    body = request_body(cfg, tpl, row.task, url, row.id)
    rng = random.Random(f"{cfg.seed}:{row.id}")
    last_err = ""

    def once() -> Any:
        usage["requests"] += 1
        res = ctx.client.chat(body)
        usage["tokens_in"] += res.tokens_in
        usage["tokens_out"] += res.tokens_out
        return res

    for answer in range(cfg.parse_retries + 1):
        if ctx.stop.is_set():
            return {**base, "status": "interrupted"}
        body["seed"] = cfg.seed + answer  # a re-asked request must not be the same seeded sample again
        try:
            res = call_with_retries(once, ctx.policy, rng=rng, stop=ctx.stop)
        except TransientError as e:
            if ctx.stop.is_set():
                return {**base, "status": "interrupted"}
            if e.status is None and "ConnectError" in str(e):  # the server was never reached: not this item's failure
                return {**base, "status": "unreachable", "error": redact(str(e), cfg.api_key())}
            return fail("transient", f"{e} (after {ctx.policy.max_retries + 1} tries)")
        except RequestError as e:
            return fail("request", str(e))
        try:
            conv = build_conversation(tpl, res.text, item_id=row.id, seed=cfg.seed)
        except ParseError as e:
            trunc = " (answer cut at max_tokens: raise max_tokens)" if res.finish_reason == "length" else ""
            last_err = f"malformed answer: {e}{trunc}; answer began {res.text[:160]!r}"
            continue
        return {**base, "status": "ok", "conversations": conv, "usage": usage, "answers": answer + 1}
    return fail("malformed", f"{last_err} (after {cfg.parse_retries + 1} answers)")


def _load_rows(selection_path: Any, image_root: Any, pool: Any) -> tuple[list[Any], Path]:
    from presel.generate.store import read_selection, resolve_image_root

    rows = read_selection(selection_path)
    return rows, resolve_image_root(selection_path, image_root, pool)


def generate_to_dir(selection_path: str | os.PathLike, out: str | os.PathLike, config: GenerateConfig | None = None, *,
                    reference_annotations: str | os.PathLike | None = None, image_root: str | os.PathLike | None = None,
                    pool: str | os.PathLike | None = None, overwrite: bool = False, progress: bool | None = None,
                    client: Any = None, on_item: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Generate instructions for the selected rows of ``selection_path`` into ``out`` (resumable).

    ``client`` replaces the HTTP client (anything with ``chat(body) -> ChatResult``); ``on_item`` is called
    with each finished line after it is on disk. Returns the summary (also ``out/summary.json``).
    Raises :class:`PreselError` when the run stops early (consecutive failures, refused key, wrong URL).
    """
    from presel.config import resolved_config
    from presel.generate.client import ChatClient, FatalError, RetryPolicy
    from presel.generate.store import ResultsStore, check_images, load_annotations, state_of
    from presel.generate.templates import load_templates
    from presel.io.atomic import write_json

    cfg = config or GenerateConfig()
    progress = cfg.progress if progress is None else progress
    cfg.require_online()
    rows, root = _load_rows(selection_path, image_root, pool)
    ref = load_annotations(reference_annotations) if reference_annotations is not None else None
    templates = load_templates(cfg.templates)
    selected = [r for r in rows if r.source == "selected"]
    tasks = sorted({r.task for r in selected})
    tpl_of = {t: templates.for_task(t) for t in tasks}
    key = run_key(cfg, templates, tasks)
    out = Path(out)
    prepare_out(out, key, overwrite=overwrite, also=(legacy_run_key(cfg, templates, tasks),))
    write_json(out / "config.json", resolved_config(
        "generate", cfg, mode="online", run_key=key,
        inputs={"selection": str(selection_path), "image_root": str(root),
                "reference_annotations": None if reference_annotations is None else str(reference_annotations)},
        templates={t: tpl.name for t, tpl in tpl_of.items()}))
    for note in templates.notes.values():
        print(f"presel generate: note: {note}", file=sys.stderr)

    store = ResultsStore(out)
    results, failures = store.load()
    done, failed = state_of(results, failures)
    todo = [r for r in selected if r.id not in done and (cfg.retry_failed or r.id not in failed)]
    check_images(todo, root)

    stop = threading.Event()
    stop_reason: str | None = None
    started = time.perf_counter()
    n_ok = n_fail = 0
    if todo:
        owns_client = client is None
        if client is None:
            client = ChatClient(cfg.base_url or "", api_key=cfg.api_key(), timeout=cfg.timeout,
                                max_connections=cfg.concurrency)
        ctx = _Ctx(cfg, client, RetryPolicy(cfg.max_retries, cfg.backoff_base, cfg.backoff_max), root, tpl_of, stop)
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="img", desc="generate", disable=not progress, dynamic_ncols=True,
                   smoothing=0.05)
        ex = _DaemonPool(cfg.concurrency, "presel-gen")
        inflight: set[Future] = set()
        pending = iter(todo)
        consecutive = 0
        fatal: BaseException | None = None

        def fill() -> None:
            while len(inflight) < 2 * cfg.concurrency and not stop.is_set():
                row = next(pending, None)
                if row is None:
                    return
                inflight.add(ex.submit(_work, row, ctx))

        try:
            fill()
            while inflight:
                finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
                oks, fails, order = [], [], []
                for fut in finished:
                    inflight.discard(fut)
                    try:
                        line = fut.result()
                    except FatalError as e:
                        fatal = e
                        stop.set()
                        continue
                    status = line.pop("status")
                    if status == "unreachable":  # a connection-level failure of the run, recorded for no item
                        if stop_reason is None:
                            stop_reason = (f"cannot connect to the server at {cfg.base_url} ({line['error']}); nothing "
                                           "was recorded for the items it could not reach")
                        stop.set()
                        continue
                    if status == "interrupted":
                        continue
                    (oks if status == "ok" else fails).append(line)
                    order.append((status, line))
                # group commit: every line of this round is on disk (fsynced) before it counts as done
                store.append(oks, fails)
                for status, line in order:
                    if status == "ok":
                        n_ok += 1
                        consecutive = 0
                    else:
                        n_fail += 1
                        consecutive += 1
                        if cfg.stop_after_failures and consecutive >= cfg.stop_after_failures and not stop.is_set():
                            stop_reason = (f"stopped after {consecutive} failed items in a row; last error ({line['id']}): "
                                           f"{line['error']}")
                            stop.set()
                    if on_item is not None:
                        on_item(line)
                bar.update(len(order))
                bar.set_postfix(ok=n_ok, failed=n_fail, refresh=False)
                fill()
        except BaseException:  # Ctrl-C, a kill signal turned into an exception, a bug: keep what is on disk
            stop.set()
            for fut in inflight:
                fut.cancel()
            ex.shutdown(wait=False)
            if owns_client:
                # abort in-flight requests so the workers end now, not after --timeout; in a daemon thread,
                # because closing a connection another thread is using can wait for that request to finish
                threading.Thread(target=client.close, name="presel-close-client", daemon=True).start()
            store.close()
            bar.close()
            raise
        ex.shutdown(wait=True)
        bar.close()
        if owns_client:
            client.close()
        if fatal is not None:
            from presel.generate.store import redact

            stop_reason = redact(f"stopped: {fatal}", cfg.api_key())
    store.close()
    elapsed = time.perf_counter() - started
    summary = finalize(out, rows, cfg, ref=ref, templates=templates, tpl_of=tpl_of, root=root,
                       last_run={"items": n_ok + n_fail, "ok": n_ok, "failed": n_fail, "seconds": round(elapsed, 3),
                                 "items_per_s": round((n_ok + n_fail) / elapsed, 3) if elapsed > 0 else None},
                       stop_reason=stop_reason)
    if stop_reason is not None:
        raise PreselError(f"{stop_reason}. Finished items are kept in {out}/results.jsonl; fix the cause and rerun "
                          f"the same command to continue ({summary['failed']} recorded failure(s) are retried with --retry-failed)")
    return summary


def finalize(out: Path, rows: list[Any], cfg: GenerateConfig, *, ref: Any, templates: Any, tpl_of: dict[str, Any],
             root: Path, last_run: dict[str, Any] | None = None, stop_reason: str | None = None,
             mode: str = "online", extra: dict[str, Any] | None = None, allow_partial: bool = False) -> dict[str, Any]:
    """Write summary.json and, when every selected row is finished (or ``allow_partial``), train.json.
    Returns the summary."""
    from presel.generate.accounting import Accounting
    from presel.generate.store import ResultsStore, reference_records, state_of, write_train
    from presel.io.atomic import write_json

    store = ResultsStore(out)
    results, failures = store.load()
    done, failed = state_of(results, failures)
    selected = [r for r in rows if r.source == "selected"]
    acc = Accounting(cfg.price_in, cfg.price_out)
    acc.add_lines(results)
    acc.add_lines(failures)
    kinds: dict[str, int] = {}
    for r in selected:
        t = acc.task(r.task)
        t.items += 1
        if r.id in done:
            t.ok += 1
        elif r.id in failed:
            t.failed += 1
            k = str(failed[r.id].get("kind", "failed"))
            kinds[k] = kinds.get(k, 0) + 1
    pending = sum(1 for r in selected if r.id not in done and r.id not in failed)
    complete = pending == 0
    ref_recs, ref_info = reference_records(rows, ref)
    summary: dict[str, Any] = {
        "mode": mode, "model": cfg.model, "complete": complete,
        "selected": len(selected), "generated": sum(1 for r in selected if r.id in done),
        "failed": sum(1 for r in selected if r.id in failed), "pending": pending,
        "failures_by_kind": dict(sorted(kinds.items())), "reference": ref_info,
        "image_root": str(root), "templates": {t: tpl.name for t, tpl in sorted(tpl_of.items())},
        "template_notes": dict(sorted(templates.notes.items())) if templates is not None else {},
        **acc.table(),
    }
    if last_run is not None:
        summary["last_run"] = last_run
    if stop_reason is not None:
        summary["stopped"] = stop_reason
    if extra:
        summary.update(extra)
    if complete or allow_partial:
        train = list(ref_recs)
        for r in rows:
            if r.source == "selected" and r.id in done:
                train.append({"id": r.id, "image": r.image, "task": r.task, "conversations": done[r.id]["conversations"]})
        summary["train_records"] = len(train)
        summary["outputs"] = write_train(out, train, cfg.format, root=root)
        if not complete:
            summary["note"] = f"{pending} selected item(s) not finished and not in train.json (allow_partial)"
    else:
        for name in ("train.json", "train_sharegpt.json"):  # never leave a stale, incomplete training file
            (out / name).unlink(missing_ok=True)
        hf = out / "train_hf"
        if (hf / "dataset_info.json").is_file() and (hf / "state.json").is_file():  # a dataset presel wrote there
            import shutil

            shutil.rmtree(hf)
        summary["train_records"] = None
        summary["note"] = f"{pending} selected item(s) not finished: rerun the same command to continue"
    write_json(out / "summary.json", summary)
    return summary
