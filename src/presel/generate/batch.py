"""Batch generation: request files for provider batch APIs / ``vllm run-batch``, result collection, and a
resumable batch-API driver.

Output folder layout (shared with online mode: ``results.jsonl``/``failures.jsonl``/``train.json`` mean
the same thing, so online and batch results can even be mixed in one folder):

    config.json                 settings + run key (model, templates, sampling)
    batch_items.jsonl           the selection rows (id, image, task, source): collect needs no --selection
    templates_resolved.json     the template of every task, as used for the requests (collect parses with it)
    requests-00000.jsonl ...    OpenAI batch format: {"custom_id": id, "method": "POST",
                                "url": "/v1/chat/completions", "body": {...}}, split by --max-lines/--max-bytes
    requests_manifest.json      request files: name, lines, bytes, first/last id
    estimate.json               cost estimate (online vs batch prices) of the requests written
    batch_api_state.json        batch-api mode: file ids, batch ids, statuses (resume polls the same batches)
    batch_output-*.jsonl        batch-api mode: downloaded output / error files
    results.jsonl failures.jsonl summary.json train.json   as in online mode

Collect reads result files in any order, partial (a torn last line is skipped), repeated (a result line
already collected is not counted twice), matches them by ``custom_id`` and parses + validates them with
the same code as online answers (:func:`presel.generate.parse.build_conversation`). Collecting more files
later only adds; a success supersedes an earlier recorded failure of the same id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from presel.errors import PreselError

TRANSPORTS = ("base64", "path", "url")
TERMINAL = ("completed", "failed", "expired", "cancelled")
REQUEST_URL = "/v1/chat/completions"


@dataclass
class BatchConfig:
    """Settings of batch files and the batch-API driver (prices per 1M tokens)."""

    image_transport: str = "base64"        # base64 data URLs | path (file:// URLs) | url (image_url_prefix + path)
    image_url_prefix: str | None = None    # for image_transport=url, e.g. https://bucket.example.com/pool/
    max_lines: int = 50_000                # per request file (OpenAI: 50,000)
    max_bytes: int = 190 * 2**20           # per request file (OpenAI: 200 MB)
    completion_window: str = "24h"
    poll_interval: float = 30.0            # first wait between polls (seconds), grows x1.5
    poll_max: float = 600.0                # longest wait between polls
    max_wait: float | None = None          # stop polling after this many seconds (rerun resumes); None: until done
    batch_discount: float = 0.5            # batch price = online price x this, unless batch prices are given
    batch_price_in: float | None = None
    batch_price_out: float | None = None
    image_tokens: int | None = None        # tokens per image for the estimate; None: from the image size
    image_token_rule: str = "openai"       # openai (85 + 170 per 512-px tile) | qwen2vl (one per 28x28 patch)
    output_fraction: float = 0.5           # expected share of max_tokens an answer uses (estimate)

    def __post_init__(self) -> None:
        if self.image_transport not in TRANSPORTS:
            raise PreselError(f"image_transport={self.image_transport!r} must be one of {', '.join(TRANSPORTS)}")
        if self.image_transport == "url" and not self.image_url_prefix:
            raise PreselError("image_transport=url needs image_url_prefix (--image-url-prefix https://.../), "
                              "the URL that image paths are relative to")
        if self.max_lines < 1:
            raise PreselError(f"max_lines={self.max_lines} must be >= 1")
        if self.max_bytes < 1024:
            raise PreselError(f"max_bytes={self.max_bytes} must be >= 1024")
        if self.poll_interval <= 0 or self.poll_max < self.poll_interval:
            raise PreselError(f"poll_interval={self.poll_interval}, poll_max={self.poll_max}: need 0 < poll_interval <= poll_max")
        if not 0 < self.batch_discount <= 1:
            raise PreselError(f"batch_discount={self.batch_discount} must be in (0, 1]")
        if self.image_token_rule not in ("openai", "qwen2vl"):
            raise PreselError(f"image_token_rule={self.image_token_rule!r} must be openai or qwen2vl")
        if not 0 < self.output_fraction <= 1:
            raise PreselError(f"output_fraction={self.output_fraction} must be in (0, 1]")


# --------------------------------------------------------------------------- context saved in the folder


@dataclass
class _Context:
    out: Path
    cfg: Any  # GenerateConfig
    rows: list[Any]
    tpl_of: dict[str, Any]
    notes: dict[str, str]
    root: Path
    reference_annotations: str | None


def _template_to_json(t: Any) -> dict[str, Any]:
    d = dataclasses.asdict(t)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _template_from_json(d: dict[str, Any]) -> Any:
    from presel.generate.templates import Template

    d = dict(d)
    for k in ("instructions", "match"):
        d[k] = tuple(d.get(k) or ())
    return Template(**d)


def prepare(selection_path: str | os.PathLike, out: str | os.PathLike, config: Any, *,
            reference_annotations: str | os.PathLike | None = None, image_root: str | os.PathLike | None = None,
            pool: str | os.PathLike | None = None, overwrite: bool = False, mode: str = "batch-file") -> _Context:
    """Open ``out`` for batch work and snapshot what collect needs (selection rows, templates, settings)."""
    from presel.config import resolved_config
    from presel.generate.online import prepare_out, run_key
    from presel.generate.store import read_selection, resolve_image_root
    from presel.generate.templates import load_templates
    from presel.io.atomic import write_json, write_jsonl

    if not config.model:
        raise PreselError("no --model: the request files name the model, e.g. --model Qwen/Qwen2.5-VL-7B-Instruct")
    rows = read_selection(selection_path)
    root = resolve_image_root(selection_path, image_root, pool)
    templates = load_templates(config.templates)
    tasks = sorted({r.task for r in rows if r.source == "selected"})
    tpl_of = {t: templates.for_task(t) for t in tasks}
    key = run_key(config, templates, tasks)
    out = Path(out)
    prepare_out(out, key, overwrite=overwrite)
    ref = None if reference_annotations is None else str(Path(reference_annotations).resolve())
    write_json(out / "config.json", resolved_config(
        "generate", config, mode=mode, run_key=key,
        inputs={"selection": str(Path(selection_path).resolve()), "image_root": str(Path(root).resolve()),
                "reference_annotations": ref},
        templates={t: tpl.name for t, tpl in tpl_of.items()}))
    write_jsonl(out / "batch_items.jsonl", ({"id": r.id, "image": r.image, "task": r.task, "source": r.source}
                                            for r in rows))
    write_json(out / "templates_resolved.json", {"templates": {t: _template_to_json(tp) for t, tp in tpl_of.items()},
                                                 "notes": dict(templates.notes)})
    return _Context(out, config, rows, tpl_of, dict(templates.notes), Path(root), ref)


def load_context(out: str | os.PathLike, *, reference_annotations: str | os.PathLike | None = None,
                 price_in: float | None = None, price_out: float | None = None) -> _Context:
    """The context saved by :func:`prepare` (for collect)."""
    from presel.config import from_dict
    from presel.generate.online import GenerateConfig
    from presel.generate.store import SelectionRow

    out = Path(out)
    need = [out / n for n in ("config.json", "batch_items.jsonl", "templates_resolved.json")]
    missing = [p.name for p in need if not p.is_file()]
    if missing:
        raise PreselError(f"--out {out} has no {', '.join(missing)}: collect into the folder where the request files "
                          "were written (presel generate --mode batch-file --out DIR), or pass --selection to start one")
    meta = json.loads(need[0].read_text())
    cfg = from_dict(GenerateConfig, meta["config"], source=str(need[0]))
    if price_in is not None:
        cfg.price_in = price_in
    if price_out is not None:
        cfg.price_out = price_out
    rows = []
    for n, line in enumerate(need[1].read_text(encoding="utf-8").splitlines(), 1):
        d = json.loads(line)
        rows.append(SelectionRow(d["id"], d["image"], d["task"], d["source"], n))
    tj = json.loads(need[2].read_text())
    tpl_of = {t: _template_from_json(d) for t, d in tj["templates"].items()}
    inputs = meta.get("inputs", {})
    ref = str(reference_annotations) if reference_annotations is not None else inputs.get("reference_annotations")
    return _Context(out, cfg, rows, tpl_of, tj.get("notes", {}), Path(inputs.get("image_root", out)), ref)


# --------------------------------------------------------------------------- request files


def _image_ref(row: Any, root: Path, batch: BatchConfig) -> str:
    from presel.generate.client import image_data_url
    from presel.generate.store import image_file

    if batch.image_transport == "base64":
        return image_data_url(image_file(row, root))
    if batch.image_transport == "path":
        from presel.io.sources import is_url, split_ref

        loc = image_file(row, root)
        if split_ref(loc)[0] is not None or is_url(loc):
            raise PreselError(f"image {row.image}: --image-transport path needs image files on this machine; use "
                              "--image-transport base64 for images inside Parquet/Arrow tables, tar shards or buckets")
        return Path(loc).resolve().as_uri()
    return (batch.image_url_prefix or "").rstrip("/") + "/" + row.image.lstrip("/")


def request_line(ctx: _Context, row: Any, batch: BatchConfig) -> dict[str, Any]:
    from presel.generate.online import request_body

    tpl = ctx.tpl_of[row.task]
    return {"custom_id": row.id, "method": "POST", "url": REQUEST_URL,
            "body": request_body(ctx.cfg, tpl, row.task, _image_ref(row, ctx.root, batch), row.id)}


def _pending_ids(ctx: _Context, *, retry_failed: bool, exclude: set[str] = frozenset()) -> list[Any]:
    from presel.generate.store import ResultsStore, state_of

    done, failed = state_of(*ResultsStore(ctx.out).load())
    return [r for r in ctx.rows if r.source == "selected" and r.id not in done and r.id not in exclude
            and (retry_failed or r.id not in failed)]


def _next_index(out: Path) -> int:
    idx = [int(p.stem.split("-")[-1]) for p in out.glob("requests-*.jsonl") if p.stem.split("-")[-1].isdigit()]
    return max(idx) + 1 if idx else 0


def write_request_files(ctx: _Context, batch: BatchConfig, rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Write ``rows`` as request files (continuing the numbering in ``out``), split by lines and bytes."""
    from presel.generate.store import check_images
    from presel.io.atomic import atomic_file

    if batch.image_transport != "url":
        check_images(rows, ctx.root)
    files: list[dict[str, Any]] = []
    k = _next_index(ctx.out)
    cur: list[bytes] = []
    cur_ids: list[str] = []
    size = 0

    def flush() -> None:
        nonlocal k, cur, cur_ids, size
        if not cur:
            return
        name = f"requests-{k:05d}.jsonl"
        with atomic_file(ctx.out / name, "wb") as f:
            f.writelines(cur)
        files.append({"name": name, "lines": len(cur), "bytes": size, "first_id": cur_ids[0], "last_id": cur_ids[-1]})
        k += 1
        cur, cur_ids, size = [], [], 0

    for row in rows:
        data = (json.dumps(request_line(ctx, row, batch), ensure_ascii=False, sort_keys=True) + "\n").encode()
        if len(data) > batch.max_bytes:
            raise PreselError(f"request of id {row.id} (image {row.image}) is {len(data)} bytes, over max_bytes="
                              f"{batch.max_bytes}; shrink the image, raise --max-bytes, or use --image-transport url/path")
        if cur and (len(cur) >= batch.max_lines or size + len(data) > batch.max_bytes):
            flush()
        cur.append(data)
        cur_ids.append(row.id)
        size += len(data)
    flush()
    _update_manifest(ctx.out, files)
    return files


def _update_manifest(out: Path, files: list[dict[str, Any]]) -> None:
    from presel.io.atomic import write_json

    p = out / "requests_manifest.json"
    old = json.loads(p.read_text())["files"] if p.exists() else []
    names = {f["name"] for f in files}
    write_json(p, {"files": [f for f in old if f["name"] not in names] + files, "url": REQUEST_URL})


def request_ids(path: Path) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line)["custom_id"])
    return out


# --------------------------------------------------------------------------- cost estimate


def _image_tokens(path: Path, batch: BatchConfig) -> tuple[int, bool]:
    """Tokens of one image (estimate) and whether its size could be read."""
    if batch.image_tokens is not None:
        return batch.image_tokens, True
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
        known = True
    except Exception:
        w = h = 512
        known = False
    if batch.image_token_rule == "qwen2vl":
        px = min(max(w * h, 56 * 56), 1280 * 28 * 28)
        scale = math.sqrt(px / (w * h))
        return max(4, math.ceil(w * scale / 28) * math.ceil(h * scale / 28)), known
    s = min(1.0, 2048 / max(w, h))
    w2, h2 = w * s, h * s
    s = min(1.0, 768 / min(w2, h2))
    w2, h2 = w2 * s, h2 * s
    return 85 + 170 * math.ceil(w2 / 512) * math.ceil(h2 / 512), known


def estimate_cost(ctx: _Context, batch: BatchConfig, rows: Sequence[Any]) -> dict[str, Any]:
    """Tokens (text ~4 chars/token, images by size) and cost of ``rows`` online and as a batch."""
    from presel.generate.accounting import cost
    from presel.generate.store import image_file

    cfg = ctx.cfg
    tin = tout = 0
    unknown = 0
    for row in rows:
        tpl = ctx.tpl_of[row.task]
        text = tpl.render(tpl.system, row.task) + tpl.render(tpl.user, row.task)
        it, known = _image_tokens(image_file(row, ctx.root), batch)
        unknown += not known
        tin += math.ceil(len(text) / 4) + it + 10
        tout += math.ceil((cfg.max_tokens or tpl.max_tokens) * batch.output_fraction)
    bp_in = batch.batch_price_in if batch.batch_price_in is not None else cfg.price_in * batch.batch_discount
    bp_out = batch.batch_price_out if batch.batch_price_out is not None else cfg.price_out * batch.batch_discount
    online = cost(tin, tout, cfg.price_in, cfg.price_out)
    batched = cost(tin, tout, bp_in, bp_out)
    return {"items": len(rows), "tokens_in": tin, "tokens_out": tout, "images_without_size": unknown,
            "image_token_rule": "fixed" if batch.image_tokens is not None else batch.image_token_rule,
            "online_cost": round(online, 6), "batch_cost": round(batched, 6), "saving": round(online - batched, 6),
            "saving_fraction": round(1 - batched / online, 4) if online > 0 else None,
            "prices_per_1m": {"online_in": cfg.price_in, "online_out": cfg.price_out, "batch_in": bp_in,
                              "batch_out": bp_out}}


def batch_files_to_dir(selection_path: str | os.PathLike, out: str | os.PathLike, config: Any,
                       batch: BatchConfig | None = None, *, reference_annotations: str | os.PathLike | None = None,
                       image_root: str | os.PathLike | None = None, pool: str | os.PathLike | None = None,
                       overwrite: bool = False) -> dict[str, Any]:
    """``--mode batch-file``: request files for every selected item not finished yet (failed ones too with
    ``config.retry_failed``); returns ``{"files": [...], "estimate": {...}}``."""
    from presel.io.atomic import write_json

    batch = batch or BatchConfig()
    ctx = prepare(selection_path, out, config, reference_annotations=reference_annotations, image_root=image_root,
                  pool=pool, overwrite=overwrite)
    rows = _pending_ids(ctx, retry_failed=config.retry_failed)
    est = estimate_cost(ctx, batch, rows)
    write_json(ctx.out / "estimate.json", est)
    files = write_request_files(ctx, batch, rows)
    return {"files": files, "estimate": est, "out": str(ctx.out)}


# --------------------------------------------------------------------------- collect


def _line_key(obj: dict[str, Any], raw: str) -> str:
    rid = obj.get("id") or ((obj.get("response") or {}).get("request_id"))
    return str(rid) if rid else "sha:" + hashlib.sha256(raw.encode()).hexdigest()[:24]


def parse_result_line(obj: dict[str, Any], tpl: Any, seed: int) -> dict[str, Any]:
    """One batch output/error line -> ``{"status": ok|failed, ...}`` (same parsing as online answers)."""
    from presel.generate.client import chat_result_from_body
    from presel.generate.parse import ParseError, build_conversation

    usage = {"requests": 1, "tokens_in": 0, "tokens_out": 0}
    err = obj.get("error")
    resp = obj.get("response")
    if err and not resp:
        msg = err.get("message") if isinstance(err, dict) else str(err)
        code = err.get("code") if isinstance(err, dict) else None
        usage["requests"] = 0  # never executed (expired, cancelled, rejected): not billed
        return {"status": "failed", "kind": "batch_error", "error": f"{code or 'error'}: {msg}", "usage": usage}
    if not isinstance(resp, dict):
        return {"status": "failed", "kind": "batch_error", "error": "result line has neither response nor error",
                "usage": usage}
    code = resp.get("status_code")
    body = resp.get("body") or {}
    if code != 200:
        msg = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else str(body)[:300]
        kind = "request" if isinstance(code, int) and 400 <= code < 500 and code not in (408, 429) else "transient"
        return {"status": "failed", "kind": kind, "error": f"HTTP {code}: {msg}", "usage": usage}
    try:
        choice = body["choices"][0]
        res = chat_result_from_body(body, choice["message"]["content"], choice)
    except (KeyError, IndexError, TypeError):
        return {"status": "failed", "kind": "malformed", "error": "response body has no choices[0].message.content",
                "usage": usage}
    usage.update(tokens_in=res.tokens_in, tokens_out=res.tokens_out)
    try:
        conv = build_conversation(tpl, res.text, item_id=str(obj.get("custom_id")), seed=seed)
    except ParseError as e:
        trunc = " (answer cut at max_tokens: raise max_tokens)" if res.finish_reason == "length" else ""
        return {"status": "failed", "kind": "malformed", "usage": usage,
                "error": f"malformed answer: {e}{trunc}; answer began {res.text[:160]!r}"}
    return {"status": "ok", "conversations": conv, "usage": usage}


def _iter_result_files(paths: Iterable[str | os.PathLike]) -> Iterable[tuple[Path, int, str, dict[str, Any] | None]]:
    for p in sorted({Path(x) for x in paths}, key=lambda q: str(q)):
        if not p.is_file():
            raise PreselError(f"{p}: result file not found")
        with open(p, encoding="utf-8", errors="replace") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError:
                    yield p, n, raw, None
                    continue
                yield p, n, raw, obj if isinstance(obj, dict) else None


def collect_into(ctx: _Context, result_files: Iterable[str | os.PathLike]) -> dict[str, Any]:
    """Parse result files into ``results.jsonl`` / ``failures.jsonl``; returns counts of what happened."""
    from presel.generate.store import ResultsStore, state_of

    store = ResultsStore(ctx.out)
    results, failures = store.load()
    done, _failed = state_of(results, failures)
    seen_keys = {str(x.get("batch_line")) for x in results + failures if x.get("batch_line")}
    by_id = {r.id: r for r in ctx.rows if r.source == "selected"}
    stats = {"files": 0, "lines": 0, "ok": 0, "failed": 0, "repeated": 0, "unknown_ids": 0, "bad_lines": 0}
    new_ok: dict[str, dict[str, Any]] = {}
    new_fail: dict[str, dict[str, Any]] = {}
    files_seen = set()
    for path, n, raw, obj in _iter_result_files(result_files):
        files_seen.add(path)
        stats["lines"] += 1
        if obj is None or "custom_id" not in obj:
            stats["bad_lines"] += 1  # a torn last line of a partial download, or not a result line
            continue
        cid = str(obj["custom_id"])
        row = by_id.get(cid)
        if row is None:
            stats["unknown_ids"] += 1
            continue
        key = _line_key(obj, raw)
        if cid in done or cid in new_ok or key in seen_keys:
            stats["repeated"] += 1
            continue
        seen_keys.add(key)
        tpl = ctx.tpl_of[row.task]
        res = parse_result_line(obj, tpl, ctx.cfg.seed)
        status = res.pop("status")
        line = {"id": row.id, "image": row.image, "task": row.task, "template": tpl.name, "batch_line": key,
                "source": f"{path.name} line {n}", **res}
        if status == "ok":
            new_ok[cid] = line
            new_fail.pop(cid, None)
        else:
            if cid in new_fail:  # an earlier failure of the same id in this collect: keep its usage too
                line["usage"] = {k: line["usage"].get(k, 0) + new_fail[cid]["usage"].get(k, 0) for k in line["usage"]}
            new_fail[cid] = line
    stats["files"] = len(files_seen)
    order = {r.id: i for i, r in enumerate(ctx.rows)}
    store.append(sorted(new_ok.values(), key=lambda x: order[x["id"]]),
                 sorted(new_fail.values(), key=lambda x: order[x["id"]]))
    store.close()
    stats["ok"], stats["failed"] = len(new_ok), len(new_fail)
    return stats


def _finalize(ctx: _Context, *, mode: str, allow_partial: bool = False, extra: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    from presel.generate.online import finalize
    from presel.generate.store import load_annotations

    ref = load_annotations(ctx.reference_annotations) if ctx.reference_annotations else None
    extra = dict(extra or {})
    extra["template_notes"] = dict(sorted(ctx.notes.items()))
    est = ctx.out / "estimate.json"
    if est.exists():
        extra["estimate"] = json.loads(est.read_text())
    return finalize(ctx.out, ctx.rows, ctx.cfg, ref=ref, templates=None, tpl_of=ctx.tpl_of, root=ctx.root,
                    mode=mode, extra=extra, allow_partial=allow_partial)


def collect_to_dir(out: str | os.PathLike, result_files: Iterable[str | os.PathLike], *,
                   reference_annotations: str | os.PathLike | None = None, allow_partial: bool = False,
                   price_in: float | None = None, price_out: float | None = None) -> dict[str, Any]:
    """``--collect``: add result files to ``out`` and rewrite summary.json (and train.json when complete,
    or with ``allow_partial``). Returns the summary, with ``collect`` counts."""
    files = list(result_files)
    if not files:
        raise PreselError("--collect got no result files; pass the output files of vllm run-batch or the batch API")
    ctx = load_context(out, reference_annotations=reference_annotations, price_in=price_in, price_out=price_out)
    stats = collect_into(ctx, files)
    return _finalize(ctx, mode="batch", allow_partial=allow_partial, extra={"collect": stats})


# --------------------------------------------------------------------------- batch API


class BatchAPI:
    """``/v1/files`` and ``/v1/batches`` of an OpenAI-compatible server, every call retried on transient errors."""

    def __init__(self, client: Any, policy: Any, seed: int = 0):
        self.client = client
        self.policy = policy
        self.rng = random.Random(seed)

    def _call(self, fn: Callable[[], Any]) -> Any:
        from presel.generate.client import call_with_retries

        return call_with_retries(fn, self.policy, rng=self.rng)

    def _json(self, r: Any, what: str) -> dict[str, Any]:
        from presel.generate.client import TransientError

        try:
            data = r.json()
        except ValueError:
            raise TransientError(f"unreadable answer to {what}") from None
        if not isinstance(data, dict) or "id" not in data:
            raise TransientError(f"answer to {what} has no id")
        return data

    def upload(self, path: Path) -> str:
        def go() -> str:
            with open(path, "rb") as f:
                r = self.client.request("POST", "files", files={"file": (path.name, f, "application/jsonl")},
                                        data={"purpose": "batch"})
            return str(self._json(r, f"upload of {path.name}")["id"])
        return self._call(go)

    def create(self, file_id: str, window: str, metadata: dict[str, str]) -> dict[str, Any]:
        body = {"input_file_id": file_id, "endpoint": REQUEST_URL, "completion_window": window, "metadata": metadata}
        return self._call(lambda: self._json(self.client.request("POST", "batches", json=body), "batch creation"))

    def get(self, batch_id: str) -> dict[str, Any]:
        return self._call(lambda: self._json(self.client.request("GET", f"batches/{batch_id}"), f"batch {batch_id}"))

    def download(self, file_id: str, dest: Path) -> None:
        from presel.io.atomic import atomic_file

        def go() -> None:
            r = self.client.request("GET", f"files/{file_id}/content")
            with atomic_file(dest, "wb") as f:
                f.write(r.content)
        self._call(go)


def _save_state(out: Path, state: dict[str, Any]) -> None:
    from presel.io.atomic import write_json

    write_json(out / "batch_api_state.json", state)


def batch_api_to_dir(selection_path: str | os.PathLike, out: str | os.PathLike, config: Any,
                     batch: BatchConfig | None = None, *, reference_annotations: str | os.PathLike | None = None,
                     image_root: str | os.PathLike | None = None, pool: str | os.PathLike | None = None,
                     overwrite: bool = False, allow_partial: bool = False, client: Any = None,
                     sleep: Callable[[float], None] = time.sleep, log: Callable[[str], None] | None = None
                     ) -> dict[str, Any]:
    """``--mode batch-api``: write request files, upload them, create batches, poll with backoff, download
    outputs and error files, collect. Every step is saved in ``batch_api_state.json`` before the next one,
    so an interrupted run resumes polling the same batches (nothing is submitted twice). Items of failed or
    expired batches without a result are recorded failures (``--retry-failed`` submits them again)."""
    from presel.generate.client import ChatClient, ClientError, RetryPolicy

    batch = batch or BatchConfig()
    config.require_online()
    say = log or (lambda m: print(f"presel generate: {m}", flush=True))
    ctx = prepare(selection_path, out, config, reference_annotations=reference_annotations, image_root=image_root,
                  pool=pool, overwrite=overwrite, mode="batch-api")
    sp = ctx.out / "batch_api_state.json"
    state: dict[str, Any] = json.loads(sp.read_text()) if sp.exists() else {"batches": []}
    entries: list[dict[str, Any]] = state["batches"]
    in_flight = {i for e in entries if not e.get("done") for i in request_ids(ctx.out / e["file"])}
    rows = _pending_ids(ctx, retry_failed=config.retry_failed, exclude=in_flight)
    if rows:
        est = estimate_cost(ctx, batch, rows)
        from presel.io.atomic import write_json

        write_json(ctx.out / "estimate.json", est)
        say(f"estimate for {est['items']} item(s): ~{est['tokens_in']} tokens in, ~{est['tokens_out']} out; "
            f"online {est['online_cost']:.4f}, batch {est['batch_cost']:.4f} (saving {est['saving']:.4f})")
        for f in write_request_files(ctx, batch, rows):
            entries.append({"file": f["name"], "lines": f["lines"], "input_file_id": None, "batch_id": None,
                            "status": None, "done": False})
        _save_state(ctx.out, state)
    owns = client is None
    if client is None:
        client = ChatClient(config.base_url, api_key=config.api_key(), timeout=config.timeout, max_connections=4)
    api = BatchAPI(client, RetryPolicy(config.max_retries, config.backoff_base, config.backoff_max), config.seed)
    started = time.monotonic()
    try:
        for e in entries:
            if e["done"]:
                continue
            if not e["input_file_id"]:
                e["input_file_id"] = api.upload(ctx.out / e["file"])
                _save_state(ctx.out, state)
            if not e["batch_id"]:
                b = api.create(e["input_file_id"], batch.completion_window, {"presel_file": e["file"]})
                e["batch_id"], e["status"] = b["id"], b.get("status")
                _save_state(ctx.out, state)
                say(f"submitted {e['file']} ({e['lines']} requests) as batch {e['batch_id']}")
        wait = batch.poll_interval
        while True:
            open_entries = [e for e in entries if not e["done"]]
            for e in open_entries:
                b = api.get(e["batch_id"])
                if b.get("status") != e["status"]:
                    e["status"] = b.get("status")
                    _save_state(ctx.out, state)
                if e["status"] in TERMINAL:
                    _finish_batch(ctx, api, e, b, say)
                    _save_state(ctx.out, state)
            if all(e["done"] for e in entries):
                break
            if batch.max_wait is not None and time.monotonic() - started + wait > batch.max_wait:
                pend = [e["batch_id"] for e in entries if not e["done"]]
                raise PreselError(f"{len(pend)} batch(es) still running after {batch.max_wait:.0f} s "
                                  f"({', '.join(pend[:3])}); rerun the same command to resume polling them "
                                  f"(state in {sp}); nothing is submitted twice")
            sleep(wait)
            wait = min(batch.poll_max, wait * 1.5)
    except ClientError as e:
        raise PreselError(f"batch API at {config.base_url}: {e}; finished steps are kept in {sp}: fix the cause and "
                          "rerun the same command to resume") from None
    finally:
        if owns:
            client.close()
    return _finalize(ctx, mode="batch-api", allow_partial=allow_partial,
                     extra={"batches": [{k: e.get(k) for k in ("file", "batch_id", "status", "lines")} for e in entries]})


def _finish_batch(ctx: _Context, api: BatchAPI, e: dict[str, Any], b: dict[str, Any], say: Callable[[str], None]) -> None:
    """Download and collect a finished batch; its requests without any result become recorded failures."""
    from presel.generate.store import ResultsStore, state_of

    stem = e["file"].replace("requests-", "").replace(".jsonl", "")
    got = []
    for key, prefix in (("output_file_id", "batch_output"), ("error_file_id", "batch_errors")):
        fid = b.get(key)
        if fid:
            dest = ctx.out / f"{prefix}-{stem}.jsonl"
            api.download(fid, dest)
            got.append(dest)
            e[key] = fid
    stats = collect_into(ctx, got) if got else {}
    done, failed = state_of(*ResultsStore(ctx.out).load())
    missing = [i for i in request_ids(ctx.out / e["file"]) if i not in done and i not in failed]
    if missing:
        errs = b.get("errors") or {}
        detail = "; ".join(str(x.get("message")) for x in (errs.get("data") or [])[:3]) if isinstance(errs, dict) else ""
        row_of = {r.id: r for r in ctx.rows}
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
