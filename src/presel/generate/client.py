"""A small client for OpenAI-compatible ``/v1/chat/completions`` (OpenAI, vLLM, SGLang, LM Studio, ...).

httpx, one pooled connection set shared by all worker threads. Images travel as base64 data URLs.
Errors are sorted into what a caller needs to decide:

* :class:`TransientError`: 408, 409, 429, 5xx, timeouts, refused or dropped connections, unreadable bodies:
  retried with exponential backoff and jitter, honouring ``retry-after-ms`` and ``Retry-After``; a server's
  ``x-should-retry: true`` / ``false`` overrides the status (as the openai-python SDK does);
* :class:`RequestError`: this request is bad (other 4xx, e.g. an image the server rejects): not retried,
  the item is recorded as failed;
* :class:`FatalError`: every request will fail (401/403 bad key, 404 wrong URL or model): the run stops.

The API key is read from an environment variable by the caller and only ever placed in the
``Authorization`` header (or the provider's key header: ``x-api-key``, ``x-goog-api-key``); no message, log or output of this module contains it.
"""

from __future__ import annotations

import base64
import email.utils
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
         ".webp": "image/webp", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff"}
_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"), (b"BM", "image/bmp"),
          (b"RIFF", "image/webp"))


class ClientError(Exception):
    """Base of the client's errors; ``str()`` is safe to log (never holds the key)."""


class TransientError(ClientError):
    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class RequestError(ClientError):
    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class FatalError(ClientError):
    pass


@dataclass
class ChatResult:
    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: str | None = None


def image_mime(path: str | Path, head: bytes = b"") -> str:
    for magic, mime in _MAGIC:
        if head.startswith(magic):
            return mime
    return _MIME.get(Path(path).suffix.lower(), "image/jpeg")


def image_data_url(path: str | Path) -> str:
    from presel.features.images import ImageRejected
    from presel.io.sources import read_bytes

    try:
        data = read_bytes(str(path))  # a file, a URL, or image bytes in a Parquet/Arrow row or a tar member
    except ImageRejected as e:
        raise OSError(e.reason) from None
    return f"data:{image_mime(path, data[:8])};base64,{base64.b64encode(data).decode('ascii')}"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds, fractional accepted, or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_after_of(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (milliseconds, preferred) or ``Retry-After``."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


def _snippet(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."


class ChatClient:
    """``POST {base_url}/chat/completions``; thread-safe (one httpx.Client shared by the workers)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 120.0,
                 max_connections: int = 32, headers: dict[str, str] | None = None):
        import httpx

        self.base_url = base_url.rstrip("/")
        h = {"User-Agent": "presel-generate"}  # Content-Type comes with each body (JSON or multipart)
        h.update(headers or {})
        if api_key:
            h["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=self.base_url + "/", headers=h, timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def request(self, method: str, path: str, **kw: Any) -> Any:
        """One HTTP request with the error sorting above; returns the httpx.Response (2xx)."""
        import httpx

        url = path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path.lstrip('/')}"
        try:
            r = self._http.request(method, path.lstrip("/"), **kw)
        except httpx.TimeoutException as e:
            raise TransientError(f"timeout on {method} {url} ({type(e).__name__})") from None
        except httpx.TransportError as e:  # refused, reset, closed mid-answer, protocol errors
            raise TransientError(f"connection error on {method} {url} ({type(e).__name__}: {_snippet(str(e), 120)})") from None
        if r.status_code < 300:
            return r
        body = _snippet(r.text)
        should = (r.headers.get("x-should-retry") or "").strip().lower()
        retryable = r.status_code in (408, 409, 429) or r.status_code >= 500
        if should == "true" or (should != "false" and retryable):
            raise TransientError(f"HTTP {r.status_code} from {url}: {body}", status=r.status_code,
                                 retry_after=retry_after_of(r.headers))
        if r.status_code in (401, 403):
            raise FatalError(f"HTTP {r.status_code} from {url}: the server refused the API key ({body}); "
                             "set the key in the environment variable named by --api-key-env")
        if r.status_code == 404:
            raise FatalError(f"HTTP 404 from {url}: {body}; check --base-url (it should end with /v1) and --model")
        raise RequestError(f"HTTP {r.status_code} from {url}: {body}", status=r.status_code)

    def chat(self, body: dict[str, Any]) -> ChatResult:
        r = self.request("POST", "chat/completions", json=body)
        try:
            data = r.json()
            choice = data["choices"][0]
            text = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise TransientError(f"unreadable chat completion from {self.base_url}: {_snippet(r.text, 200)}") from None
        return chat_result_from_body(data, text, choice)


def chat_result_from_body(data: dict[str, Any], text: Any, choice: dict[str, Any]) -> ChatResult:
    usage = data.get("usage") or {}
    return ChatResult(text="" if text is None else str(text), tokens_in=int(usage.get("prompt_tokens") or 0),
                      tokens_out=int(usage.get("completion_tokens") or 0), finish_reason=choice.get("finish_reason"))


def build_messages(system: str, user: str, image_url: str) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = []
    if system.strip():
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                             {"type": "text", "text": user}]})
    return msgs


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5          # transient retries per request (after the first try)
    backoff_base: float = 1.0     # seconds; attempt k waits about base * 2**k
    backoff_max: float = 60.0     # cap of one backoff wait
    max_retry_after: float = 300.0  # cap of an honoured Retry-After

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Equal-jitter exponential backoff; a server's Retry-After is honoured (it is the minimum wait)."""
        cap = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        d = cap / 2 + rng.uniform(0, cap / 2)
        if retry_after is not None:
            d = max(d, min(retry_after, self.max_retry_after))
        return d


def call_with_retries(fn: Callable[[], Any], policy: RetryPolicy, *, rng: random.Random,
                      stop: threading.Event | None = None, on_retry: Callable[[TransientError], None] | None = None) -> Any:
    """``fn()`` with retries on :class:`TransientError`; other errors propagate at once.

    A set ``stop`` event interrupts the waits (the last error is raised)."""
    attempt = 0
    while True:
        try:
            return fn()
        except TransientError as e:
            if attempt >= policy.max_retries or (stop is not None and stop.is_set()):
                raise
            if on_retry is not None:
                on_retry(e)
            wait = policy.delay(attempt, rng, e.retry_after)
            attempt += 1
            if stop is not None:
                if stop.wait(wait):
                    raise
            else:
                time.sleep(wait)
