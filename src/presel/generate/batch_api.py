"""``--mode batch-api``: submit request files to a provider's batch API under a cap on enqueued tokens,
poll, download, collect; resumable after a crash without duplicate batches.

Providers (their documented endpoints; ``--base-url`` is the API root given below):

* ``openai`` / ``vllm`` (any server with OpenAI's ``/v1/files`` + ``/v1/batches``, base ``.../v1``): upload the
  JSONL (``purpose=batch``), ``POST /batches`` with ``metadata``, ``GET /batches/{id}`` until ``completed`` /
  ``failed`` / ``expired`` / ``cancelled``, download ``output_file_id`` and ``error_file_id``. A batch that
  failed with ``token_limit_exceeded`` is submitted again once others have finished.
* ``anthropic`` (base ``https://api.anthropic.com/v1``): ``POST /messages/batches`` with the file's lines as
  ``requests``, ``GET /messages/batches/{id}`` until ``processing_status == "ended"``, results from
  ``results_url``. Headers ``x-api-key`` and ``anthropic-version``.
* ``gemini`` (base ``https://generativelanguage.googleapis.com/v1beta``): resumable upload to
  ``/upload/v1beta/files``, ``POST /models/{model}:batchGenerateContent`` with ``input_config.file_name``,
  ``GET /batches/{id}`` until ``BATCH_STATE_SUCCEEDED`` / ``FAILED`` / ``CANCELLED`` / ``EXPIRED``, then
  ``/download/v1beta/{responsesFile}:download?alt=media``. Header ``x-goog-api-key``.

Crash safety: ``batch_api_state.json`` records, for every request file, that an upload or a create has
*started* (before the call) and its file / batch id (after it). A create that times out or is interrupted
may still have made a batch; before any retry (and on resume) presel looks it up: by the ``presel_marker``
metadata (OpenAI), the display name (Gemini), or, as Anthropic batches carry no metadata, a batch created
since the recorded start with the file's request count. Only when none is found is it created again.

Cap: with ``max_enqueued_tokens`` request files are split so each fits, and a file is submitted only while
the estimated input tokens of all unfinished batches plus its own stay under the cap; otherwise presel
polls until batches finish. ``--retry-failed`` goes through the same loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from presel.errors import PreselError

TERMINAL = ("completed", "failed", "expired", "cancelled", "ended")
DEFAULT_BASE = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com/v1",
                "gemini": "https://generativelanguage.googleapis.com/v1beta", "vllm": None}
MAX_REQUEUES = 3
KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY"}


def _now() -> float:
    return time.time()


def _iso_ts(s: str | None) -> float | None:
    if not s:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(UTC).timestamp()
    except ValueError:
        return None


class _API:
    """One provider's batch endpoints. Every method is one logical call; ``create`` is tried once (the
    driver looks a lost create up before trying again)."""

    provider = "openai"

    def __init__(self, client: Any, policy: Any, seed: int, model: str, window: str):
        self.client, self.policy, self.model, self.window = client, policy, model, window
        self.rng = random.Random(seed)

    def call(self, fn: Callable[[], Any]) -> Any:
        from presel.generate.client import call_with_retries

        return call_with_retries(fn, self.policy, rng=self.rng)

    def js(self, r: Any, what: str, need: str | None = "id") -> dict[str, Any]:
        from presel.generate.client import TransientError

        try:
            data = r.json()
        except ValueError:
            raise TransientError(f"unreadable answer to {what}") from None
        if not isinstance(data, dict) or (need and need not in data):
            raise TransientError(f"answer to {what} has no {need}")
        return data

    def save(self, url: str, dest: Path) -> None:
        from presel.io.atomic import atomic_file

        def go() -> None:
            r = self.client.request("GET", url)
            with atomic_file(dest, "wb") as f:
                f.write(r.content)
        self.call(go)

    # interface
    def upload(self, path: Path, name: str) -> str | None:
        raise NotImplementedError

    def find_upload(self, name: str, size: int) -> str | None:
        raise NotImplementedError

    def create(self, e: dict[str, Any], path: Path) -> dict[str, Any]:
        raise NotImplementedError

    def find_batch(self, e: dict[str, Any], known: set[str]) -> str | None:
        raise NotImplementedError

    def get(self, batch_id: str) -> dict[str, Any]:
        """``{"status", "outputs": [(label, url)], "detail", "token_limit"}``."""
        raise NotImplementedError


class OpenAIAPI(_API):
    def upload(self, path: Path, name: str) -> str | None:
        def go() -> str:
            with open(path, "rb") as f:
                r = self.client.request("POST", "files", files={"file": (name, f, "application/jsonl")},
                                        data={"purpose": "batch"})
            return str(self.js(r, f"upload of {path.name}")["id"])
        return self.call(go)

    def _pages(self, path: str, params: dict[str, Any]) -> Any:
        after = None
        while True:
            q = dict(params, **({"after": after} if after else {}))
            page = self.call(lambda q=q: self.js(self.client.request("GET", path, params=q), f"list {path}", "data"))
            yield from page.get("data") or []
            if not page.get("has_more") or not page.get("data"):
                return
            after = page.get("last_id") or page["data"][-1].get("id")

    def find_upload(self, name: str, size: int) -> str | None:
        for f in self._pages("files", {"purpose": "batch", "limit": 10000}):
            if f.get("filename") == name and int(f.get("bytes") or -1) == size:
                return str(f["id"])
        return None

    def create(self, e: dict[str, Any], path: Path) -> dict[str, Any]:
        from presel.generate.providers import REQUEST_URL

        body = {"input_file_id": e["input_file_id"], "endpoint": REQUEST_URL, "completion_window": self.window,
                "metadata": {"presel_file": e["file"], "presel_marker": e["marker"]}}
        b = self.js(self.client.request("POST", "batches", json=body), "batch creation")
        return {"id": str(b["id"]), "status": b.get("status")}

    def find_batch(self, e: dict[str, Any], known: set[str]) -> str | None:
        for b in self._pages("batches", {"limit": 100}):
            if (b.get("metadata") or {}).get("presel_marker") == e["marker"]:
                return str(b["id"])
            created = b.get("created_at")
            if isinstance(created, (int, float)) and e.get("create_started") and created < e["create_started"] - 3600:
                return None  # listed newest first: nothing older can be ours
        return None

    def get(self, batch_id: str) -> dict[str, Any]:
        b = self.call(lambda: self.js(self.client.request("GET", f"batches/{batch_id}"), f"batch {batch_id}"))
        errs = b.get("errors") or {}
        data = (errs.get("data") or []) if isinstance(errs, dict) else []
        outs = [(lab, f"files/{b[k]}/content") for k, lab in (("output_file_id", "batch_output"),
                                                             ("error_file_id", "batch_errors")) if b.get(k)]
        return {"status": b.get("status"), "outputs": outs,
                "detail": "; ".join(f"{x.get('code')}: {x.get('message')}" for x in data[:3]),
                "token_limit": any(x.get("code") == "token_limit_exceeded" for x in data)}


class AnthropicAPI(_API):
    provider = "anthropic"

    def upload(self, path: Path, name: str) -> str | None:
        return None  # requests go inline in the create call

    def find_upload(self, name: str, size: int) -> str | None:
        return None

    def create(self, e: dict[str, Any], path: Path) -> dict[str, Any]:
        reqs = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        b = self.js(self.client.request("POST", "messages/batches", json={"requests": reqs}), "batch creation")
        return {"id": str(b["id"]), "status": b.get("processing_status")}

    def find_batch(self, e: dict[str, Any], known: set[str]) -> str | None:
        since = float(e.get("create_started") or 0) - 120
        hits, after = [], None
        while True:
            q = {"limit": 100, **({"after_id": after} if after else {})}
            page = self.call(lambda q=q: self.js(self.client.request("GET", "messages/batches", params=q),
                                                 "list batches", "data"))
            for b in page.get("data") or []:
                ts = _iso_ts(b.get("created_at"))
                if ts is not None and ts >= since and str(b["id"]) not in known \
                        and sum(int(v or 0) for v in (b.get("request_counts") or {}).values()) == e["lines"]:
                    hits.append(str(b["id"]))
            if not page.get("has_more") or not page.get("data"):
                break
            after = page.get("last_id")
        if len(hits) > 1:
            raise PreselError(f"the create of {e['file']} was interrupted and {len(hits)} batches could be it "
                              f"({', '.join(hits)}); Anthropic batches carry no metadata to tell them apart: cancel the "
                              "extra ones in the console, then record the one to keep as batch_id of "
                              f"{e['file']} in batch_api_state.json and rerun")
        return hits[0] if hits else None

    def get(self, batch_id: str) -> dict[str, Any]:
        b = self.call(lambda: self.js(self.client.request("GET", f"messages/batches/{batch_id}"), f"batch {batch_id}"))
        st = b.get("processing_status")
        outs = [("batch_results", str(b["results_url"]))] if st == "ended" and b.get("results_url") else []
        return {"status": st, "outputs": outs, "detail": "", "token_limit": False}


class GeminiAPI(_API):
    provider = "gemini"
    _STATES = {"SUCCEEDED": "completed", "FAILED": "failed", "CANCELLED": "cancelled", "EXPIRED": "expired"}

    def _root(self) -> str:
        base = self.client.base_url.rstrip("/")
        return base.rsplit("/", 1)[0]

    def _version(self) -> str:
        return self.client.base_url.rstrip("/").rsplit("/", 1)[1]

    def upload(self, path: Path, name: str) -> str | None:
        from presel.generate.client import TransientError

        data = path.read_bytes()

        def go() -> str:
            r = self.client.request("POST", f"{self._root()}/upload/{self._version()}/files", json={"file": {"display_name": name}},
                                    headers={"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
                                             "X-Goog-Upload-Header-Content-Length": str(len(data)),
                                             "X-Goog-Upload-Header-Content-Type": "application/jsonl"})
            url = r.headers.get("x-goog-upload-url")
            if not url:
                raise TransientError("upload start gave no x-goog-upload-url")
            r2 = self.client.request("POST", url, content=data,
                                     headers={"X-Goog-Upload-Offset": "0", "X-Goog-Upload-Command": "upload, finalize"})
            f = self.js(r2, f"upload of {path.name}", "file")["file"]
            return str(f["name"])
        return self.call(go)

    def find_upload(self, name: str, size: int) -> str | None:
        token = None
        while True:
            q = {"pageSize": 100, **({"pageToken": token} if token else {})}
            page = self.call(lambda q=q: self.js(self.client.request("GET", "files", params=q), "list files", None))
            for f in page.get("files") or []:
                if (f.get("displayName") or f.get("display_name")) == name and int(f.get("sizeBytes") or -1) == size:
                    return str(f["name"])
            token = page.get("nextPageToken")
            if not token:
                return None

    def create(self, e: dict[str, Any], path: Path) -> dict[str, Any]:
        model = self.model if self.model.startswith("models/") else f"models/{self.model}"
        body = {"batch": {"display_name": e["marker"], "input_config": {"file_name": e["input_file_id"]}}}
        op = self.js(self.client.request("POST", f"{model}:batchGenerateContent", json=body), "batch creation", "name")
        return {"id": str(op["name"]), "status": (op.get("metadata") or {}).get("state")}

    def find_batch(self, e: dict[str, Any], known: set[str]) -> str | None:
        token = None
        while True:
            q = {"pageSize": 100, **({"pageToken": token} if token else {})}
            page = self.call(lambda q=q: self.js(self.client.request("GET", "batches", params=q), "list batches", None))
            for op in page.get("operations") or page.get("batches") or []:
                md = op.get("metadata") or op
                if (md.get("displayName") or md.get("display_name")) == e["marker"]:
                    return str(op["name"])
            token = page.get("nextPageToken")
            if not token:
                return None

    def get(self, batch_id: str) -> dict[str, Any]:
        op = self.call(lambda: self.js(self.client.request("GET", batch_id), f"batch {batch_id}", "name"))
        md = op.get("metadata") or {}
        state = str(md.get("state") or "")
        status = self._STATES.get(state.rsplit("_", 1)[-1], state or "running")
        resp = op.get("response") or md.get("output") or {}
        f = resp.get("responsesFile") or resp.get("responses_file")
        outs = [("batch_output", f"{self._root()}/download/{self._version()}/{f}:download?alt=media")] \
            if f and status in TERMINAL else []
        err = op.get("error") or {}
        return {"status": status, "outputs": outs, "detail": str(err.get("message") or ""), "token_limit": False}


def make_api(provider: str, client: Any, policy: Any, seed: int, model: str, window: str) -> _API:
    cls = {"anthropic": AnthropicAPI, "gemini": GeminiAPI}.get(provider, OpenAIAPI)
    return cls(client, policy, seed, model, window)


def make_client(provider: str, config: Any) -> Any:
    from presel.generate.client import ChatClient
    from presel.generate.providers import ANTHROPIC_VERSION

    env = config.api_key_env
    if env == "OPENAI_API_KEY" and provider in KEY_ENV:  # the default name: take the provider's usual one
        env = KEY_ENV[provider]
    key = os.environ.get(env) or None
    if provider in KEY_ENV and not key:
        raise PreselError(f"no API key for {provider}: set the environment variable {env} (or name another one with "
                          "--api-key-env)")
    base = config.base_url or DEFAULT_BASE.get(provider)
    if not base:
        raise PreselError("no --base-url: name the server of the batch API, e.g. --base-url http://127.0.0.1:8000/v1")
    if provider == "anthropic":
        return ChatClient(base, timeout=config.timeout, max_connections=4,
                          headers={"x-api-key": key or "", "anthropic-version": ANTHROPIC_VERSION})
    if provider == "gemini":
        return ChatClient(base, timeout=config.timeout, max_connections=4, headers={"x-goog-api-key": key or ""})
    return ChatClient(base, api_key=key, timeout=config.timeout, max_connections=4)


# --------------------------------------------------------------------------- driver


def _save(out: Path, state: dict[str, Any]) -> None:
    from presel.io.atomic import write_json

    write_json(out / "batch_api_state.json", state)


def _marker(out: Path, run_key: str, e: dict[str, Any]) -> str:
    h = hashlib.sha256(f"{out.resolve()}\n{run_key}".encode()).hexdigest()[:12]
    return f"presel-{h}-{e['file'].replace('.jsonl', '')}-{e.get('requeues', 0)}"


def batch_api_to_dir(selection_path: str | os.PathLike, out: str | os.PathLike, config: Any, batch: Any = None, *,
                     reference_annotations: str | os.PathLike | None = None, image_root: str | os.PathLike | None = None,
                     pool: str | os.PathLike | None = None, overwrite: bool = False, allow_partial: bool = False,
                     client: Any = None, sleep: Callable[[float], None] = time.sleep,
                     log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write request files, submit them under the token cap, poll with backoff, download and collect (see the
    module doc). Items of failed or expired batches without a result are recorded failures
    (``--retry-failed`` submits them again, under the same cap)."""
    from presel.generate.batch import (
        BatchConfig,
        _back_ids,
        _finalize,
        _pending_ids,
        estimate_cost,
        prepare,
        request_ids,
        write_request_files,
    )
    from presel.generate.client import ClientError, RetryPolicy
    from presel.io.atomic import write_json

    batch = batch or BatchConfig()
    if not config.model:
        raise PreselError("no --model: name the model of the batches, e.g. --model gpt-4o-mini")
    if not (config.base_url or DEFAULT_BASE.get(batch.provider)):
        config.require_online()
    say = log or (lambda m: print(f"presel generate: {m}", flush=True))
    ctx = prepare(selection_path, out, config, reference_annotations=reference_annotations, image_root=image_root,
                  pool=pool, overwrite=overwrite, mode="batch-api")
    run_key = json.loads((ctx.out / "config.json").read_text()).get("run_key", "")
    sp = ctx.out / "batch_api_state.json"
    state: dict[str, Any] = json.loads(sp.read_text()) if sp.exists() else {"provider": batch.provider, "batches": []}
    if state.get("provider", "openai") != batch.provider:
        raise PreselError(f"{sp} holds {state.get('provider', 'openai')} batches; rerun with --provider "
                          f"{state.get('provider', 'openai')} (or use another --out for {batch.provider})")
    entries: list[dict[str, Any]] = state["batches"]
    for e in entries:  # a state written before markers existed
        e.setdefault("requeues", 0)
        e.setdefault("marker", _marker(ctx.out, run_key, e))
    back = _back_ids(ctx, batch.provider)
    in_flight = {i for e in entries if not e.get("done") for i in request_ids(ctx.out / e["file"], back)}
    rows = _pending_ids(ctx, retry_failed=config.retry_failed, exclude=in_flight,
                        decode=batch.image_transport != "url")
    if rows:
        per_row: dict[str, int] = {}
        est = estimate_cost(ctx, batch, rows, per_row)
        write_json(ctx.out / "estimate.json", est)
        say(f"estimate for {est['items']} item(s): ~{est['tokens_in']} tokens in, ~{est['tokens_out']} out; "
            f"online {est['online_cost']:.4f}, batch {est['batch_cost']:.4f} (saving {est['saving']:.4f})")
        for f in write_request_files(ctx, batch, rows, per_row):
            e = {"file": f["name"], "lines": f["lines"], "tokens": f["tokens"], "input_file_id": None,
                 "batch_id": None, "status": None, "done": False, "requeues": 0}
            e["marker"] = _marker(ctx.out, run_key, e)
            entries.append(e)
        _save(ctx.out, state)
    owns = client is None
    if client is None:
        client = make_client(batch.provider, config)
    api = make_api(batch.provider, client, RetryPolicy(config.max_retries, config.backoff_base, config.backoff_max),
                   config.seed, str(config.model), batch.completion_window)
    started = time.monotonic()
    try:
        wait = batch.poll_interval
        while True:
            _submit_what_fits(ctx.out, api, state, batch, say, sleep)
            open_entries = [e for e in entries if e.get("batch_id") and not e["done"]]
            for e in open_entries:
                b = api.get(e["batch_id"])
                if b["status"] != e["status"]:
                    e["status"] = b["status"]
                    _save(ctx.out, state)
                if e["status"] in TERMINAL:
                    if b["token_limit"] and not b["outputs"] and e.get("requeues", 0) < MAX_REQUEUES:
                        say(f"batch {e['batch_id']} ({e['file']}) refused: over the provider's enqueued-token limit "
                            f"({b['detail']}); it is submitted again when others finish (lower --max-enqueued-tokens)")
                        e.setdefault("refused", []).append(e["batch_id"])
                        e.update(batch_id=None, status=None, create_started=None, requeues=e.get("requeues", 0) + 1)
                        e["marker"] = _marker(ctx.out, run_key, e)
                        _save(ctx.out, state)
                        continue
                    _finish_batch(ctx, api, e, b, say, back)
                    _save(ctx.out, state)
            if all(e["done"] for e in entries):
                break
            if not any(e.get("batch_id") and not e["done"] for e in entries):
                continue  # nothing in flight (a refused batch was reset): submit again at once
            if batch.max_wait is not None and time.monotonic() - started + wait > batch.max_wait:
                pend = [e["batch_id"] for e in entries if e.get("batch_id") and not e["done"]]
                waiting = sum(1 for e in entries if not e.get("batch_id") and not e["done"])
                raise PreselError(f"{len(pend)} batch(es) still running after {batch.max_wait:.0f} s "
                                  f"({', '.join(pend[:3])}), {waiting} request file(s) waiting for room under the "
                                  f"token cap; rerun the same command to resume polling them (state in {sp}); "
                                  "nothing is submitted twice")
            sleep(wait)
            wait = min(batch.poll_max, wait * 1.5)
    except ClientError as e:
        raise PreselError(f"batch API at {client.base_url}: {e}; finished steps are kept in {sp}: fix the cause and "
                          "rerun the same command to resume") from None
    finally:
        if owns:
            client.close()
    return _finalize(ctx, mode="batch-api", allow_partial=allow_partial,
                     extra={"provider": batch.provider, "max_enqueued_tokens": batch.max_enqueued_tokens,
                            "batches": [{k: e.get(k) for k in ("file", "batch_id", "status", "lines", "tokens")}
                                        for e in entries]})


def _enqueued(entries: list[dict[str, Any]]) -> int:
    return sum(int(e.get("tokens") or 0) for e in entries
               if not e["done"] and (e.get("batch_id") or e.get("create_started")))


def _submit_what_fits(out: Path, api: _API, state: dict[str, Any], batch: Any, say: Callable[[str], None],
                      sleep: Callable[[float], None]) -> None:
    entries = state["batches"]
    cap = batch.max_enqueued_tokens
    for e in entries:
        if e["done"] or e.get("batch_id"):
            continue
        toks = int(e.get("tokens") or 0)
        others = _enqueued([x for x in entries if x is not e])
        if cap is not None and others > 0 and others + toks > cap:
            return  # wait for room; files go in order
        path = out / e["file"]
        if api.provider != "anthropic" and not e.get("input_file_id"):
            name = f"{e['marker'].rsplit('-', 1)[0]}.jsonl"
            size = path.stat().st_size
            found = api.find_upload(name, size) if e.get("upload_started") else None
            if not found:
                e["upload_started"] = _now()
                _save(out, state)
                found = api.upload(path, name)
            e["input_file_id"] = found
            _save(out, state)
        _create_once(out, api, state, e, sleep)
        say(f"submitted {e['file']} ({e['lines']} requests, ~{toks} tokens) as batch {e['batch_id']}"
            + (f"; ~{_enqueued(entries)} tokens enqueued of {cap}" if cap is not None else ""))


def _create_once(out: Path, api: _API, state: dict[str, Any], e: dict[str, Any], sleep: Callable[[float], None]) -> None:
    """Create the batch of ``e`` exactly once: a create that may have happened (it started, then failed or
    was interrupted) is looked up before it is tried again."""
    from presel.generate.client import TransientError

    known = {str(x.get("batch_id")) for x in state["batches"] if x.get("batch_id")}
    known |= {b for x in state["batches"] for b in x.get("refused", [])}
    attempt = 0
    while True:
        if e.get("create_started"):
            found = api.find_batch(e, known)
            if found:
                e["batch_id"], e["status"], e["adopted"] = found, None, True
                _save(out, state)
                return
        e["create_started"] = _now()
        _save(out, state)
        try:
            b = api.create(e, out / e["file"])
        except TransientError:
            if attempt >= api.policy.max_retries:
                raise
            sleep(api.policy.delay(attempt, api.rng))
            attempt += 1
            continue
        e["batch_id"], e["status"] = b["id"], b.get("status")
        _save(out, state)
        return


def _finish_batch(ctx: Any, api: _API, e: dict[str, Any], b: dict[str, Any], say: Callable[[str], None],
                  back: dict[str, str]) -> None:
    """Download and collect a finished batch; its requests without any result become recorded failures."""
    from presel.generate.batch import collect_into, request_ids
    from presel.generate.store import ResultsStore, state_of

    stem = e["file"].replace("requests-", "").replace(".jsonl", "")
    got = []
    for label, url in b["outputs"]:
        dest = ctx.out / f"{label}-{stem}.jsonl"
        api.save(url, dest)
        got.append(dest)
    stats = collect_into(ctx, got, api.provider) if got else {}
    done, failed = state_of(*ResultsStore(ctx.out).load())
    missing = [i for i in request_ids(ctx.out / e["file"], back) if i not in done and i not in failed]
    if missing:
        row_of = {r.id: r for r in ctx.rows}
        detail = b.get("detail") or ""
        store = ResultsStore(ctx.out)
        store.append(failures=[{"id": i, "image": row_of[i].image, "task": row_of[i].task, "kind": f"batch_{e['status']}",
                                "error": f"batch {e['batch_id']} ended '{e['status']}' without a result for this request"
                                         + (f" ({detail})" if detail else "") + "; rerun with --retry-failed to resubmit",
                                "usage": {"requests": 0, "tokens_in": 0, "tokens_out": 0}} for i in missing])
        store.close()
    e["done"] = True
    e["collected"] = stats
    say(f"batch {e['batch_id']} {e['status']}: {stats.get('ok', 0)} ok, {stats.get('failed', 0)} failed, "
        f"{len(missing)} without result")
