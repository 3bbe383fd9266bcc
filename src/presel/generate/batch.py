"""Batch generation: request files for provider batch APIs / ``vllm run-batch``, result collection, and a
resumable batch-API driver.

Output folder layout (shared with online mode: ``results.jsonl``/``failures.jsonl``/``train.json`` mean
the same thing, so online and batch results can even be mixed in one folder):

    config.json                 settings + run key (model, templates, sampling)
    batch_items.jsonl           the selection rows (id, image, task, source): collect needs no --selection
    templates_resolved.json     the template of every task, as used for the requests (collect parses with it)
    requests-00000.jsonl ...    the provider's batch input lines (presel.generate.providers; OpenAI / vLLM:
                                {"custom_id": id, "method": "POST", "url": "/v1/chat/completions", "body": {...}}),
                                split by --max-lines/--max-bytes (and --max-enqueued-tokens in batch-api mode)
    requests_manifest.json      request files: name, lines, bytes, first/last id
    estimate.json               cost estimate (online vs batch prices) of the requests written
    batch_api_state.json        batch-api mode: provider, file ids, batch ids, statuses, token estimates (resume
                                polls the same batches; see presel.generate.batch_api)
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from presel.config import neutral
from presel.errors import PreselError

MODES = ("online", "batch-file", "batch-api")
TRANSPORTS = ("base64", "path", "url")
TERMINAL = ("completed", "failed", "expired", "cancelled")
REQUEST_URL = "/v1/chat/completions"


@dataclass
class BatchConfig:
    """How the requests travel: online, as batch files, or through a batch API (prices per 1M tokens). Every
    setting here is result-neutral: the instructions depend on the model, the templates and the sampling
    settings (:class:`presel.generate.online.GenerateConfig`), not on the way the requests were sent."""

    mode: str | None = neutral(None, help="online (the default of presel generate and presel run) requests; "
                                          "batch-file: write request files only; batch-api: submit them to --base-url")
    collect: list[str] | None = neutral(None, nargs="+", help="batch result files to collect (vllm run-batch / provider output "
                                                   "and error files)")
    allow_partial: bool = neutral(False, help="write train.json even when some selected items have neither a result "
                                              "nor a recorded failure")
    image_transport: str = neutral("base64")  # base64 data URLs | path (file:// URLs) | url (image_url_prefix + path)
    image_url_prefix: str | None = neutral(None)  # for image_transport=url, e.g. https://bucket.example.com/pool/
    max_lines: int = neutral(50_000)       # per request file (OpenAI: 50,000)
    max_bytes: int = neutral(190 * 2**20)  # per request file (OpenAI: 200 MB)
    completion_window: str = neutral("24h")
    poll_interval: float = neutral(30.0)   # first wait between polls (seconds), grows x1.5
    poll_max: float = neutral(600.0)       # longest wait between polls
    max_wait: float | None = neutral(None)  # stop polling after this many seconds (rerun resumes); None: until done
    batch_discount: float = neutral(0.5)   # batch price = online price x this, unless batch prices are given
    batch_price_in: float | None = neutral(None)
    batch_price_out: float | None = neutral(None)
    image_tokens: int | None = neutral(None)  # tokens per image for the estimate; None: from the image size
    image_token_rule: str = neutral("auto")  # auto (from the model name) | gpt-4o | gpt-4o-mini | o-series | patch32 | qwen2vl
    output_fraction: float = neutral(0.5)  # expected share of max_tokens an answer uses (estimate)
    provider: str = neutral("openai")      # request/result shapes and batch API: openai | anthropic | gemini | vllm
    max_enqueued_tokens: int | None = neutral(None)  # batch-api: estimated input tokens in unfinished batches stay under this

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise PreselError(f"mode={self.mode!r} must be one of {', '.join(MODES)}")
        if self.collect is not None and (not isinstance(self.collect, (list, tuple))
                                         or not all(isinstance(c, str) for c in self.collect)):
            raise PreselError(f"collect={self.collect!r} must be a list of result files")
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
        from presel.generate.image_tokens import RULES
        from presel.generate.providers import check_provider

        if self.image_token_rule not in RULES:
            raise PreselError(f"image_token_rule={self.image_token_rule!r} must be one of {', '.join(RULES)}")
        check_provider(self.provider)
        if self.mode == "online" and self.provider in ("anthropic", "gemini") and not self.collect:
            raise PreselError(f"provider={self.provider} is for mode batch-file/batch-api and collect; online mode speaks "
                              "OpenAI chat completions, which both offer: set base_url to https://api.anthropic.com/v1 or "
                              "https://generativelanguage.googleapis.com/v1beta/openai and leave provider unset "
                              "(or set mode: batch-file / batch-api)")
        if self.provider in ("anthropic", "gemini") and self.image_transport == "path":
            raise PreselError(f"provider={self.provider} cannot read local file:// images (image_transport=path is for "
                              "vllm); use --image-transport base64 or url")
        if self.max_enqueued_tokens is not None and self.max_enqueued_tokens < 1:
            raise PreselError(f"max_enqueued_tokens={self.max_enqueued_tokens} must be >= 1")
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
    from presel.generate.online import legacy_run_key, prepare_out, run_key
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
    prepare_out(out, key, overwrite=overwrite, also=(legacy_run_key(config, templates, tasks),))
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
    """One request line in the provider's batch input shape (:mod:`presel.generate.providers`)."""
    from presel.generate.online import request_body
    from presel.generate.providers import request_line as provider_line

    tpl = ctx.tpl_of[row.task]
    body = request_body(ctx.cfg, tpl, row.task, _image_ref(row, ctx.root, batch), row.id)
    return provider_line(batch.provider, row.id, body)


def _pending_ids(ctx: _Context, *, retry_failed: bool, exclude: set[str] = frozenset(), decode: bool = True) -> list[Any]:
    from presel.generate.store import ResultsStore, refuse_unsafe, state_of

    done, failed = state_of(*ResultsStore(ctx.out).load())
    rows = [r for r in ctx.rows if r.source == "selected" and r.id not in done and r.id not in exclude
            and (retry_failed or r.id not in failed)]
    return refuse_unsafe(rows, ctx.root, ctx.out, decode=decode)  # never in a request file: recorded as failed


def _next_index(out: Path) -> int:
    idx = [int(p.stem.split("-")[-1]) for p in out.glob("requests-*.jsonl") if p.stem.split("-")[-1].isdigit()]
    return max(idx) + 1 if idx else 0


def write_request_files(ctx: _Context, batch: BatchConfig, rows: Sequence[Any],
                        tokens_of: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Write ``rows`` as request files (continuing the numbering in ``out``), split by lines and bytes, and by
    estimated input tokens (``tokens_of``) at ``batch.max_enqueued_tokens`` so every file fits under the cap."""
    from presel.generate.store import check_images
    from presel.io.atomic import atomic_file

    if batch.image_transport != "url":
        check_images(rows, ctx.root)
    files: list[dict[str, Any]] = []
    k = _next_index(ctx.out)
    cur: list[bytes] = []
    cur_ids: list[str] = []
    size = toks = 0
    cap = batch.max_enqueued_tokens if tokens_of is not None else None

    def flush() -> None:
        nonlocal k, cur, cur_ids, size, toks
        if not cur:
            return
        name = f"requests-{k:05d}.jsonl"
        with atomic_file(ctx.out / name, "wb") as f:
            f.writelines(cur)
        files.append({"name": name, "lines": len(cur), "bytes": size, "first_id": cur_ids[0], "last_id": cur_ids[-1],
                      "tokens": toks if tokens_of is not None else None, "provider": batch.provider})
        k += 1
        cur, cur_ids, size, toks = [], [], 0, 0

    for row in rows:
        data = (json.dumps(request_line(ctx, row, batch), ensure_ascii=False, sort_keys=True) + "\n").encode()
        if len(data) > batch.max_bytes:
            raise PreselError(f"request of id {row.id} (image {row.image}) is {len(data)} bytes, over max_bytes="
                              f"{batch.max_bytes}; shrink the image, raise --max-bytes, or use --image-transport url/path")
        t = tokens_of[row.id] if tokens_of is not None else 0
        if cap is not None and t > cap:
            raise PreselError(f"request of id {row.id} alone is ~{t} input tokens, over max_enqueued_tokens={cap}; "
                              "raise --max-enqueued-tokens")
        if cur and (len(cur) >= batch.max_lines or size + len(data) > batch.max_bytes
                    or (cap is not None and toks + t > cap)):
            flush()
        cur.append(data)
        cur_ids.append(row.id)
        size += len(data)
        toks += t
    flush()
    _update_manifest(ctx.out, files)
    return files


def _update_manifest(out: Path, files: list[dict[str, Any]]) -> None:
    from presel.io.atomic import write_json

    p = out / "requests_manifest.json"
    old = json.loads(p.read_text())["files"] if p.exists() else []
    names = {f["name"] for f in files}
    write_json(p, {"files": [f for f in old if f["name"] not in names] + files, "url": REQUEST_URL})


def request_ids(path: Path, back: dict[str, str] | None = None) -> list[str]:
    """Item ids of a request file (``back`` maps a provider's custom id back to the item id)."""
    from presel.generate.providers import line_id

    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                cid = line_id(json.loads(line))
                out.append((back or {}).get(cid, cid))
    return out


def _back_ids(ctx: _Context, provider: str) -> dict[str, str]:
    from presel.generate.providers import custom_id

    return {custom_id(provider, r.id): r.id for r in ctx.rows if r.source == "selected"}


# --------------------------------------------------------------------------- cost estimate


def _image_tokens(path: Path, batch: BatchConfig, model: str | None = None, detail: str = "auto") -> tuple[int, bool]:
    """Tokens of one image (estimate, per model: :mod:`presel.generate.image_tokens`) and whether its size
    could be read (unreadable sizes count as 512x512)."""
    from presel.generate.image_tokens import image_tokens

    if batch.image_tokens is not None:
        return batch.image_tokens, True
    try:
        import io

        from PIL import Image

        from presel.io.sources import is_url, read_bytes, split_ref

        loc = str(path)
        src = loc if split_ref(loc)[0] is None and not is_url(loc) else io.BytesIO(read_bytes(loc))
        with Image.open(src) as im:
            w, h = im.size
        known = True
    except Exception:
        w = h = 512
        known = False
    return image_tokens(w, h, rule=batch.image_token_rule, model=model, detail=detail), known


def row_tokens(ctx: _Context, batch: BatchConfig, row: Any) -> tuple[int, int, bool]:
    """Estimated (input tokens, output tokens, image size known) of one request."""
    from presel.generate.store import image_file

    tpl = ctx.tpl_of[row.task]
    text = tpl.render(tpl.system, row.task) + tpl.render(tpl.user, row.task)
    it, known = _image_tokens(image_file(row, ctx.root), batch, ctx.cfg.model, ctx.cfg.image_detail)
    tout = math.ceil((ctx.cfg.max_tokens or tpl.max_tokens) * batch.output_fraction)
    return math.ceil(len(text) / 4) + it + 10, tout, known


def estimate_cost(ctx: _Context, batch: BatchConfig, rows: Sequence[Any],
                  per_row: dict[str, int] | None = None) -> dict[str, Any]:
    """Tokens (text ~4 chars/token, images by size and model) and cost of ``rows`` online and as a batch.
    ``per_row`` (if given) receives each row's estimated input tokens."""
    from presel.generate.accounting import cost
    from presel.generate.image_tokens import resolved_rule

    cfg = ctx.cfg
    tin = tout = 0
    unknown = 0
    for row in rows:
        i, o, known = row_tokens(ctx, batch, row)
        unknown += not known
        tin += i
        tout += o
        if per_row is not None:
            per_row[row.id] = i
    bp_in = batch.batch_price_in if batch.batch_price_in is not None else cfg.price_in * batch.batch_discount
    bp_out = batch.batch_price_out if batch.batch_price_out is not None else cfg.price_out * batch.batch_discount
    online = cost(tin, tout, cfg.price_in, cfg.price_out)
    batched = cost(tin, tout, bp_in, bp_out)
    return {"items": len(rows), "tokens_in": tin, "tokens_out": tout, "images_without_size": unknown,
            "image_token_rule": "fixed" if batch.image_tokens is not None else resolved_rule(batch.image_token_rule, cfg.model),
            "image_detail": cfg.image_detail,
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
    rows = _pending_ids(ctx, retry_failed=config.retry_failed, decode=batch.image_transport != "url")
    est = estimate_cost(ctx, batch, rows)
    write_json(ctx.out / "estimate.json", est)
    files = write_request_files(ctx, batch, rows)
    return {"files": files, "estimate": est, "out": str(ctx.out)}


# --------------------------------------------------------------------------- collect


def _line_key(out: Any, raw: str) -> str:
    return str(out.line_key) if out.line_key else "sha:" + hashlib.sha256(raw.encode()).hexdigest()[:24]


def parse_result_line(obj: dict[str, Any], tpl: Any, seed: int, provider: str | None = None) -> dict[str, Any]:
    """One result line of any provider -> ``{"status": ok|failed, ...}`` (same parsing as online answers).
    Raises ``ValueError`` on a line of no known result shape."""
    from presel.generate.providers import parse_result

    o = parse_result(obj, provider)
    if o is None:
        raise ValueError("not a result line")
    return outcome_line(o, tpl, seed)


def outcome_line(o: Any, tpl: Any, seed: int) -> dict[str, Any]:
    """A parsed :class:`presel.generate.providers.Outcome` -> ``{"status": ok|failed, ...}``."""
    from presel.generate.parse import ParseError, build_conversation

    usage = {"requests": int(o.billed), "tokens_in": o.tokens_in, "tokens_out": o.tokens_out}
    if o.text is None:
        return {"status": "failed", "kind": o.kind, "error": o.error or "no answer", "usage": usage}
    try:
        conv = build_conversation(tpl, o.text, item_id=o.request_id, seed=seed)
    except ParseError as e:
        trunc = " (answer cut at max_tokens: raise max_tokens)" if o.finish_reason == "length" else ""
        return {"status": "failed", "kind": "malformed", "usage": usage,
                "error": f"malformed answer: {e}{trunc}; answer began {o.text[:160]!r}"}
    return {"status": "ok", "conversations": conv, "usage": usage}


def _parse_checked(obj: Any, provider: str | None, where: str) -> Any:
    """parse_result of one line whose fields have the types of its shape; wrong types are a located error."""
    from presel.generate.parse import result_line_problem
    from presel.generate.providers import EXPECTED_SHAPES, parse_result, shape_of

    shape = shape_of(obj)
    bad = result_line_problem(obj, shape) if shape else None
    if bad is None:
        try:
            return parse_result(obj, provider)
        except (AttributeError, TypeError, ValueError, KeyError, IndexError) as e:
            bad = f"fields of unexpected types ({type(e).__name__}: {str(e)[:160]})"
    raise PreselError(f"{where}: not a valid {shape} batch result line: {bad}; expected one of: {EXPECTED_SHAPES}")


def _iter_result_files(paths: Iterable[str | os.PathLike], provider: str | None = None
                       ) -> Iterable[tuple[Path, int, str, Any]]:
    """(file, line number, raw line, Outcome or None for a torn last line) of every non-empty line. A line of
    no known result shape is an error naming the file, the line and the shapes expected; only the last line
    of a file may be torn (a partial download), and it is skipped."""
    from presel.generate.providers import EXPECTED_SHAPES, PROVIDERS, shape_of

    for p in sorted({Path(x) for x in paths}, key=lambda q: str(q)):
        if not p.is_file():
            raise PreselError(f"{p}: result file not found")
        with open(p, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
        for n, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                if n == len(lines) and not raw.endswith("\n"):
                    yield p, n, raw, None  # the torn last line of a partial download
                    continue
                raise PreselError(f"{p} line {n}: not JSON ({raw[:80]!r}); a result file holds one JSON result per "
                                  f"line, one of: {EXPECTED_SHAPES}") from None
            except RecursionError:
                raise PreselError(f"{p} line {n}: JSON nested too deeply; fix or remove that line") from None
            out = _parse_checked(obj, provider, f"{p} line {n}")
            if out is None:
                got = shape_of(obj)
                keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
                hint = (f"it is a {got} result line, but --provider {provider} was given" if got
                        else f"its keys are {keys}" + ("; this looks like a request file, not a result file"
                                                       if isinstance(obj, dict) and ("body" in obj or "params" in obj
                                                                                     or "request" in obj) else ""))
                raise PreselError(f"{p} line {n}: not a batch result line ({hint}); expected one of: {EXPECTED_SHAPES}"
                                  f" (providers: {', '.join(PROVIDERS)})")
            yield p, n, raw, out


def collect_into(ctx: _Context, result_files: Iterable[str | os.PathLike], provider: str | None = None
                 ) -> dict[str, Any]:
    """Parse result files into ``results.jsonl`` / ``failures.jsonl``; returns counts of what happened."""
    from presel.generate.providers import custom_id
    from presel.generate.store import ResultsStore, state_of

    store = ResultsStore(ctx.out)
    results, failures = store.load()
    done, _failed = state_of(results, failures)
    seen_keys = {str(x.get("batch_line")) for x in results + failures if x.get("batch_line")}
    by_id = {r.id: r for r in ctx.rows if r.source == "selected"}
    by_hashed = {custom_id("anthropic", r.id): r for r in by_id.values()}
    stats = {"files": 0, "lines": 0, "ok": 0, "failed": 0, "repeated": 0, "unknown_ids": 0, "bad_lines": 0}
    new_ok: dict[str, dict[str, Any]] = {}
    new_fail: dict[str, dict[str, Any]] = {}
    files_seen = set()
    for path, n, raw, out in _iter_result_files(result_files, provider):
        files_seen.add(path)
        stats["lines"] += 1
        if out is None:
            stats["bad_lines"] += 1  # the torn last line of a partial download
            continue
        row = (by_hashed if out.shape == "anthropic" else by_id).get(out.request_id) or by_id.get(out.request_id)
        if row is None:
            stats["unknown_ids"] += 1
            continue
        cid = row.id
        key = _line_key(out, raw)
        if cid in done or cid in new_ok or key in seen_keys:
            stats["repeated"] += 1
            continue
        seen_keys.add(key)
        tpl = ctx.tpl_of[row.task]
        res = outcome_line(out, tpl, ctx.cfg.seed)
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
                   price_in: float | None = None, price_out: float | None = None,
                   provider: str | None = None) -> dict[str, Any]:
    """``--collect``: add result files to ``out`` and rewrite summary.json (and train.json when complete,
    or with ``allow_partial``). Returns the summary, with ``collect`` counts."""
    files = list(result_files)
    if not files:
        raise PreselError("--collect got no result files; pass the output files of vllm run-batch or the batch API")
    ctx = load_context(out, reference_annotations=reference_annotations, price_in=price_in, price_out=price_out)
    stats = collect_into(ctx, files, provider)
    return _finalize(ctx, mode="batch", allow_partial=allow_partial, extra={"collect": stats})
