"""Request and result shapes of the batch interfaces presel speaks, as each provider documents them.

Requests are built once in OpenAI chat-completions form (:func:`presel.generate.online.request_body`) and
translated here:

* ``openai`` / ``vllm`` - OpenAI Batch API input lines ``{"custom_id", "method": "POST", "url":
  "/v1/chat/completions", "body"}`` (also what ``vllm run-batch -i`` reads). Output lines ``{"id",
  "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``; OpenAI's error file holds
  ``error: {"code", "message"}`` with ``response: null`` (e.g. ``batch_expired``); vLLM's error lines put
  the message in the top-level ``error`` string with ``response.body`` null.
* ``anthropic`` - Message Batches ``{"custom_id", "params": {model, max_tokens, system, messages, ...}}``;
  result lines ``{"custom_id", "result": {"type": "succeeded", "message": {...}}}``, ``{"type": "errored",
  "error": {"type": "error", "error": {"type", "message"}}}``, ``{"type": "canceled"}``, ``{"type":
  "expired"}``. ``custom_id`` must match ``^[a-zA-Z0-9_-]{1,64}$``: other ids are sent as a hash
  (:func:`custom_id`), mapped back on collect.
* ``gemini`` - batch mode input-file lines ``{"key", "request": GenerateContentRequest}``; output lines
  ``{"key", "response": GenerateContentResponse}`` or ``{"key", "error"|"status": {"code", "message"}}``.

:func:`parse_result` recognises every result shape above and returns one :class:`Outcome`; a line of no
known shape is ``None`` (collect turns that into an error naming the file and line).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from presel.errors import PreselError

PROVIDERS = ("openai", "anthropic", "gemini", "vllm")
REQUEST_URL = "/v1/chat/completions"
ANTHROPIC_VERSION = "2023-06-01"
_ANTHROPIC_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

EXPECTED_SHAPES = (
    '{"custom_id", "response": {"status_code", "body"}, "error"} (OpenAI Batch API, vllm run-batch); '
    '{"custom_id", "result": {"type": succeeded|errored|canceled|expired}} (Anthropic Message Batches); '
    '{"key", "response"|"error"|"status"} (Gemini batch mode)')


def check_provider(provider: str) -> str:
    if provider not in PROVIDERS:
        raise PreselError(f"provider={provider!r} must be one of {', '.join(PROVIDERS)}")
    return provider


def custom_id(provider: str, item_id: str) -> str:
    """The id a request carries: the item id, except where the provider forbids its characters (Anthropic)."""
    if provider == "anthropic" and not _ANTHROPIC_ID.fullmatch(item_id):
        return "h-" + hashlib.sha256(item_id.encode()).hexdigest()[:40]
    return item_id


# --------------------------------------------------------------------------- requests


def _split_messages(body: dict[str, Any]) -> tuple[str, str, str]:
    """(system text, user text, image URL) of a body built by ``request_body``."""
    system, user, image = "", "", ""
    for m in body.get("messages", []):
        c = m.get("content")
        if m.get("role") == "system":
            system = c if isinstance(c, str) else "".join(p.get("text", "") for p in c)
        elif m.get("role") == "user":
            for p in c if isinstance(c, list) else [{"type": "text", "text": c}]:
                if p.get("type") == "image_url":
                    image = p["image_url"]["url"]
                elif p.get("type") == "text":
                    user += p.get("text", "")
    return system, user, image


def _data_url(url: str) -> tuple[str, str] | None:
    m = re.match(r"data:([^;,]+);base64,(.*)", url, re.S)
    return (m.group(1), m.group(2)) if m else None


def anthropic_params(body: dict[str, Any]) -> dict[str, Any]:
    """Messages API params of an OpenAI chat body (image block first, then the text; JSON schema as
    ``output_config.format``)."""
    system, user, image = _split_messages(body)
    d = _data_url(image)
    if d:
        src = {"type": "base64", "media_type": d[0], "data": d[1]}
    elif image.startswith(("http://", "https://")):
        src = {"type": "url", "url": image}
    else:
        raise PreselError("the Anthropic API cannot read local file:// images; use --image-transport base64 or url")
    p: dict[str, Any] = {"model": body["model"],
                         "max_tokens": body.get("max_tokens") or body.get("max_completion_tokens") or 1024,
                         "messages": [{"role": "user", "content": [{"type": "image", "source": src},
                                                                   {"type": "text", "text": user}]}]}
    if system.strip():
        p["system"] = system
    if "temperature" in body:
        p["temperature"] = min(1.0, float(body["temperature"]))  # Anthropic's range is [0, 1]
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        p["output_config"] = {"format": {"type": "json_schema", "schema": rf["json_schema"]["schema"]}}
    return p


def gemini_request(body: dict[str, Any]) -> dict[str, Any]:
    """A GenerateContentRequest of an OpenAI chat body (image part first, then the text)."""
    system, user, image = _split_messages(body)
    d = _data_url(image)
    if d:
        img = {"inline_data": {"mime_type": d[0], "data": d[1]}}
    elif image.startswith(("http://", "https://", "gs://")):
        from presel.generate.client import image_mime

        img = {"file_data": {"mime_type": image_mime(image), "file_uri": image}}
    else:
        raise PreselError("Gemini batch mode cannot read local file:// images; use --image-transport base64 or url")
    gen: dict[str, Any] = {"max_output_tokens": body.get("max_tokens") or body.get("max_completion_tokens")}
    if "temperature" in body:
        gen["temperature"] = body["temperature"]
    if "seed" in body:
        gen["seed"] = body["seed"]
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        gen["response_mime_type"] = "application/json"
        gen["response_json_schema"] = rf["json_schema"]["schema"]
    req: dict[str, Any] = {"contents": [{"role": "user", "parts": [img, {"text": user}]}],
                           "generation_config": {k: v for k, v in gen.items() if v is not None}}
    if system.strip():
        req["system_instruction"] = {"parts": [{"text": system}]}
    return req


def request_line(provider: str, item_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """One line of a request file in ``provider``'s batch input shape."""
    cid = custom_id(provider, item_id)
    if provider == "anthropic":
        return {"custom_id": cid, "params": anthropic_params(body)}
    if provider == "gemini":
        return {"key": cid, "request": gemini_request(body)}
    return {"custom_id": cid, "method": "POST", "url": REQUEST_URL, "body": body}


def line_id(line: dict[str, Any]) -> str:
    """The request id of a request or result line of any provider."""
    return str(line["key"] if "key" in line and "custom_id" not in line else line["custom_id"])


# --------------------------------------------------------------------------- results


@dataclass
class Outcome:
    """One result line, whatever its provider: ``text`` when the request produced an answer, else ``error``."""

    request_id: str
    shape: str                      # openai | anthropic | gemini
    text: str | None = None
    error: str | None = None
    kind: str = "request"           # failure kind: request | transient | batch_error | batch_expired | batch_canceled
    billed: bool = True             # whether the request ran (counts as a request in the accounting)
    tokens_in: int = 0
    tokens_out: int = 0
    finish_reason: str | None = None
    line_key: str | None = None     # the provider's id of this result line (dedupe of repeated files)


def shape_of(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    if "custom_id" in obj and isinstance(obj.get("result"), dict) and "type" in obj["result"]:
        return "anthropic"
    if "custom_id" in obj and ("response" in obj or "error" in obj):
        return "openai"
    if "key" in obj and any(k in obj for k in ("response", "error", "status")):
        return "gemini"
    return None


def _msg(err: Any) -> tuple[str | None, str]:
    if isinstance(err, dict):
        inner = err.get("error") if isinstance(err.get("error"), dict) else err
        code = inner.get("code") or inner.get("type") or inner.get("status")
        return (None if code is None else str(code)), str(inner.get("message") or json.dumps(inner)[:300])
    return None, str(err)


def _http_kind(code: Any) -> str:
    return "request" if isinstance(code, int) and 400 <= code < 500 and code not in (408, 409, 429) else "transient"


def _parse_openai(obj: dict[str, Any]) -> Outcome:
    o = Outcome(str(obj["custom_id"]), "openai", line_key=obj.get("id") or (obj.get("response") or {}).get("request_id"))
    resp, err = obj.get("response"), obj.get("error")
    if not isinstance(resp, dict):
        code, msg = _msg(err if err else "result line has neither response nor error")
        o.error, o.billed = f"{code or 'error'}: {msg}", False
        o.kind = "batch_expired" if code == "batch_expired" else "batch_cancelled" if code == "batch_cancelled" \
            else "batch_error"
        return o
    status, body = resp.get("status_code"), resp.get("body")
    if status != 200 or not isinstance(body, dict):
        if isinstance(body, dict) and body.get("error"):
            msg = _msg(body["error"])[1]
        elif err:  # vllm run-batch: the message is the top-level error, response.body is null
            msg = _msg(err)[1]
        else:
            msg = json.dumps(body)[:300]
        o.error, o.kind = f"HTTP {status}: {msg}", _http_kind(status)
        return o
    usage = body.get("usage") or {}
    o.tokens_in, o.tokens_out = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    try:
        choice = body["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        o.error, o.kind = "response body has no choices[0].message.content", "malformed"
        return o
    o.text, o.finish_reason = "" if content is None else str(content), choice.get("finish_reason")
    return o


def _parse_anthropic(obj: dict[str, Any]) -> Outcome:
    r = obj["result"]
    o = Outcome(str(obj["custom_id"]), "anthropic")
    t = r.get("type")
    if t == "succeeded" and isinstance(r.get("message"), dict):
        m = r["message"]
        o.line_key = m.get("id")
        u = m.get("usage") or {}
        o.tokens_in = sum(int(u.get(k) or 0) for k in ("input_tokens", "cache_creation_input_tokens",
                                                      "cache_read_input_tokens"))
        o.tokens_out = int(u.get("output_tokens") or 0)
        o.text = "".join(b.get("text", "") for b in m.get("content") or [] if isinstance(b, dict) and b.get("type") == "text")
        o.finish_reason = "length" if m.get("stop_reason") == "max_tokens" else m.get("stop_reason")
        return o
    o.billed = False
    if t == "errored":
        code, msg = _msg(r.get("error") or {})
        o.error = f"{code or 'error'}: {msg}"
        o.kind = "request" if code == "invalid_request_error" else "transient"
    elif t in ("canceled", "expired"):
        o.error = f"request {t} before it ran"
        o.kind = "batch_canceled" if t == "canceled" else "batch_expired"
    else:
        o.error, o.kind = f"unknown result type {t!r}", "batch_error"
    return o


def _parse_gemini(obj: dict[str, Any]) -> Outcome:
    o = Outcome(str(obj["key"]), "gemini")
    resp = obj.get("response")
    err = obj.get("error") or obj.get("status")
    if not isinstance(resp, dict):
        code, msg = _msg(err or "result line has neither response nor error")
        o.error, o.billed = f"{code or 'error'}: {msg}", False
        o.kind = _http_kind(int(code)) if code and str(code).isdigit() and int(code) >= 400 else "batch_error"
        return o
    o.line_key = resp.get("responseId") or resp.get("response_id")
    u = resp.get("usageMetadata") or resp.get("usage_metadata") or {}
    o.tokens_in = int(u.get("promptTokenCount") or u.get("prompt_token_count") or 0)
    o.tokens_out = int(u.get("candidatesTokenCount") or u.get("candidates_token_count") or 0) \
        + int(u.get("thoughtsTokenCount") or u.get("thoughts_token_count") or 0)
    cands = resp.get("candidates") or []
    if not cands:
        fb = resp.get("promptFeedback") or resp.get("prompt_feedback") or {}
        o.error = f"no candidates (blockReason {fb.get('blockReason') or fb.get('block_reason')})"
        return o
    c = cands[0]
    parts = (c.get("content") or {}).get("parts") or []
    o.text = "".join(p.get("text", "") for p in parts if isinstance(p, dict) and not p.get("thought"))
    fr = c.get("finishReason") or c.get("finish_reason")
    o.finish_reason = "length" if fr == "MAX_TOKENS" else fr
    return o


def parse_result(obj: Any, provider: str | None = None) -> Outcome | None:
    """The outcome of one result line, or ``None`` when it has none of the known shapes (or not the shape of
    ``provider`` when one is given; ``openai`` and ``vllm`` share theirs)."""
    shape = shape_of(obj)
    if shape is None or (provider is not None and shape != ("openai" if provider == "vllm" else provider)):
        return None
    return {"openai": _parse_openai, "anthropic": _parse_anthropic, "gemini": _parse_gemini}[shape](obj)
