"""A real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions API, with scripted misbehaviour.

Used by the generate tests and by benchmarks/generate_bench.py. Each request is attributed to an item
by the image it carries (test images hold ``b"\\x89PNG fake <id>"``); ``script[id]`` lists what the
server does on the item's 1st, 2nd, ... request, then ``default`` for the rest:

``ok`` answer JSON Q/A; ``slow:S`` wait S seconds then answer; ``429:R`` 429 with ``Retry-After: R``;
``500``; ``400``; ``malformed`` prose without JSON; ``badjson`` a truncated JSON answer; ``close`` headers
and half a body, then the connection is closed; ``drop`` the connection is closed without an answer;
``text:...`` answers that text.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FAKE_MAGIC = b"\x89PNG fake "
# a real 2x2 PNG, so the bytes decode as an image (presel refuses to send a file that does not); the item's
# name follows its IEND chunk, where decoders stop reading
PNG_2X2 = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000002000000020802000000fdd49a730000001649444154789c633c"
                        "c1c5c5c0c0c0c4c0c0c0c0c000000b3800e011f4d5d60000000049454e44ae426082")


def fake_image_bytes(item_id: str, pad: int = 0) -> bytes:
    """Bytes that name their item (a newline, then ``pad`` filler bytes to mimic a real image's size)."""
    tail = b"\n" + (bytes(range(256)) * (pad // 256 + 1))[:pad] if pad else b""
    return PNG_2X2 + FAKE_MAGIC + item_id.encode() + tail


def ok_answer(item_id: str) -> str:
    return json.dumps({"conversations": [{"question": f"What is shown in {item_id}?", "answer": f"It is {item_id}."},
                                         {"question": "What colour is it?", "answer": "Grey."}]})


class FakeOpenAI:
    def __init__(self, *, latency: float = 0.0, api_key: str | None = None, script: dict[str, list[str]] | None = None,
                 default: str = "ok", answer=ok_answer):
        self.latency = latency
        self.api_key = api_key
        self.script = dict(script or {})
        self.default = default
        self.answer = answer
        self.lock = threading.Lock()
        self.attempts: Counter = Counter()
        self.times: dict[str, list[float]] = defaultdict(list)
        self.bodies: list[dict[str, Any]] = []
        self.auth_seen: set[str] = set()
        self.keep_bodies = True
        self.extra_routes: dict[tuple[str, str], Any] = {}  # (method, path prefix) -> handler(req) for batch tests
        self._server: ThreadingHTTPServer | None = None
        self.server_errors: list[str] = []  # unexpected handler exceptions (a bug in this server or a test)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def do_GET(self) -> None:
                fake._handle(self, "GET")

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:  # clients that hang up are normal
                err = sys.exc_info()[1]
                if not isinstance(err, (ConnectionError, TimeoutError)):
                    fake.server_errors.append(repr(err))

        srv = Server(("127.0.0.1", 0), Handler)
        srv.daemon_threads = True
        srv.request_queue_size = 256
        self._server = srv
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return f"http://127.0.0.1:{srv.server_address[1]}/v1"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeOpenAI:
        self.base_url = self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def send_bytes(h: BaseHTTPRequestHandler, status: int, data: bytes, content_type: str = "application/octet-stream",
                   headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    @classmethod
    def send_json(cls, h: BaseHTTPRequestHandler, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        cls.send_bytes(h, status, json.dumps(obj).encode(), "application/json", headers)

    @staticmethod
    def item_of(body: dict[str, Any]) -> str:
        for m in body.get("messages", []):
            content = m.get("content")
            if isinstance(content, list):
                for part in content:
                    if part.get("type") == "image_url":
                        url = part["image_url"]["url"]
                        if url.startswith("data:"):
                            raw = base64.b64decode(url.split(",", 1)[1])
                            if FAKE_MAGIC in raw:
                                return raw.split(FAKE_MAGIC, 1)[1].split(b"\n", 1)[0].decode()
                        return url.rsplit("/", 1)[-1]
        return "?"

    def completion(self, item: str, text: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"id": f"chatcmpl-{item}", "object": "chat.completion", "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}

    def respond(self, item: str, body: dict[str, Any]) -> tuple[str, Any]:
        """What to do for one chat request of ``item``: (action, payload). Shared with the batch endpoint."""
        with self.lock:
            n = self.attempts[item]
            self.attempts[item] += 1
            self.times[item].append(time.monotonic())
            steps = self.script.get(item, [])
            action = steps[n] if n < len(steps) else self.default
        return action, None

    # ------------------------------------------------------------------ dispatch
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        with self.lock:
            self.auth_seen.add(h.headers.get("Authorization") or "")
        for (m, prefix), fn in self.extra_routes.items():
            if m == method and h.path.startswith(prefix):
                fn(h, raw)
                return
        if method != "POST" or not h.path.rstrip("/").endswith("/v1/chat/completions"):
            self.send_json(h, 404, {"error": {"message": f"no route {method} {h.path}"}})
            return
        if self.api_key is not None and h.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.send_json(h, 401, {"error": {"message": "invalid api key"}})
            return
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self.send_json(h, 400, {"error": {"message": "bad json"}})
            return
        item = self.item_of(body)
        if self.keep_bodies:
            with self.lock:
                self.bodies.append(body)
        action, _ = self.respond(item, body)
        if self.latency:
            time.sleep(self.latency)
        self.perform(h, action, item, body)

    def perform(self, h: BaseHTTPRequestHandler, action: str, item: str, body: dict[str, Any]) -> None:
        if action.startswith("slow:"):
            time.sleep(float(action.split(":", 1)[1]))
            action = "ok"
        if action == "ok":
            self.send_json(h, 200, self.completion(item, self.answer(item), body))
        elif action.startswith("text:"):
            self.send_json(h, 200, self.completion(item, action[5:], body))
        elif action == "malformed":
            self.send_json(h, 200, self.completion(item, "Sorry, I can only describe this image in prose.", body))
        elif action == "badjson":
            self.send_json(h, 200, self.completion(item, '{"conversations": [{"question": "Wha', body))
        elif action.startswith("429ms:"):  # retry-after-ms (milliseconds), as OpenAI sends
            self.send_json(h, 429, {"error": {"message": "rate limited"}}, {"retry-after-ms": action.split(":", 1)[1]})
        elif action.startswith("429"):
            ra = action.split(":", 1)[1] if ":" in action else "0"
            self.send_json(h, 429, {"error": {"message": "rate limited"}}, {"Retry-After": ra})
        elif action.startswith("should:"):  # should:false:500 -> 500 with x-should-retry: false
            _, flag, code = action.split(":")
            self.send_json(h, int(code), {"error": {"message": f"scripted {code}"}}, {"x-should-retry": flag})
        elif re.fullmatch(r"[45]\d\d", action):
            self.send_json(h, int(action), {"error": {"message": f"scripted {action}"}})
        elif action == "close":
            data = json.dumps(self.completion(item, self.answer(item), body)).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
        elif action == "drop":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
        else:
            raise ValueError(f"unknown scripted action {action!r}")


def make_selection(root: Path, selected: dict[str, str], reference: dict[str, str] | None = None,
                   fmt: str = "jsonl", pad: int = 0) -> Path:
    """Images (fake PNG bytes naming their id) under root/images and a selection file; returns its path."""
    rows = []
    for source, items in (("reference", reference or {}), ("selected", selected)):
        for i, (rid, task) in enumerate(items.items()):
            img = f"images/{task}/{rid}.png"
            (root / img).parent.mkdir(parents=True, exist_ok=True)
            (root / img).write_bytes(fake_image_bytes(rid, pad))
            rows.append({"id": rid, "image": img, "task": task, "cluster": 0, "nc_score": None,
                         "rank": i + 1 if source == "selected" else None, "source": source})
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = root / "selection.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path = root / "selection.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class FakeBatchAPI(FakeOpenAI):
    """Adds ``/v1/files`` and ``/v1/batches`` (with their list pages). ``batch_script[k]`` decides the k-th
    created batch: ``complete:N`` completes after N polls, ``expire:N`` expires after N polls with the first
    half of its requests answered, ``fail:N`` fails validation after N polls (no output). Requests inside a
    batch follow the same per-item ``script`` as chat requests. Output lines come in reverse request order.

    ``token_cap``: a batch that would take the enqueued tokens (``tokens_per_request`` per request of every
    unfinished batch) over it fails at once with ``token_limit_exceeded``, as OpenAI's do; ``max_enqueued``
    records the most ever enqueued. ``drop_creates``: the k-th create makes its batch, then the connection
    drops before the answer; ``hang_creates``: {k: seconds} the k-th create makes its batch, then answers only
    after that long (a create that times out client-side after the batch was made)."""

    def __init__(self, *, batch_script: list[str] | None = None, token_cap: int | None = None,
                 tokens_per_request: int = 100, drop_creates: set[int] | None = None,
                 hang_creates: dict[int, float] | None = None, **kw: Any):
        super().__init__(**kw)
        self.batch_script = list(batch_script or [])
        self.token_cap = token_cap
        self.tokens_per_request = tokens_per_request
        self.drop_creates = set(drop_creates or ())
        self.hang_creates = dict(hang_creates or {})
        self.max_enqueued = 0
        self.files: dict[str, tuple[str, bytes]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.polls: Counter = Counter()
        self.created = 0
        self.extra_routes = {("POST", "/v1/files"): self._upload, ("GET", "/v1/files/"): self._content,
                             ("GET", "/v1/files?"): self._list_files, ("POST", "/v1/batches"): self._create,
                             ("GET", "/v1/batches/"): self._get, ("GET", "/v1/batches?"): self._list_batches}

    def enqueued(self) -> int:
        return sum(b["n"] * self.tokens_per_request for b in self.batches.values()
                   if b["status"] in ("validating", "in_progress", "finalizing"))

    @staticmethod
    def _query(h: BaseHTTPRequestHandler) -> dict[str, str]:
        from urllib.parse import parse_qsl, urlsplit

        return dict(parse_qsl(urlsplit(h.path).query))

    def _page(self, h: BaseHTTPRequestHandler, items: list[dict[str, Any]]) -> None:
        q = self._query(h)
        limit = int(q.get("limit", 20))
        if "after" in q:
            ids = [x["id"] for x in items]
            items = items[ids.index(q["after"]) + 1:] if q["after"] in ids else []
        page = items[:limit]
        self.send_json(h, 200, {"object": "list", "data": page, "has_more": len(items) > limit,
                                "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None})

    def _list_files(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        self._page(h, [{"id": fid, "object": "file", "filename": n, "bytes": len(d), "purpose": "batch"}
                       for fid, (n, d) in reversed(list(self.files.items()))])

    def _list_batches(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        self._page(h, [{k: v for k, v in b.items() if k not in ("plan", "n")} for b in reversed(list(self.batches.values()))])

    def _new_file(self, name: str, data: bytes) -> str:
        with self.lock:
            fid = f"file-{len(self.files):04d}"
            self.files[fid] = (name, data)
        return fid

    def _upload(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        ctype = h.headers.get("Content-Type", "")
        m = re.search(r"boundary=([^;]+)", ctype)
        if not m:
            self.send_json(h, 400, {"error": {"message": "expected multipart/form-data"}})
            return
        boundary = m.group(1).strip('"').encode()
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in raw.split(b"--" + boundary)[1:-1]:
            head, _, body = part.strip(b"\r\n").partition(b"\r\n\r\n")
            name = re.search(rb'name="([^"]+)"', head)
            fname = re.search(rb'filename="([^"]+)"', head)
            if name:
                fields[name.group(1).decode()] = (fname.group(1).decode() if fname else None, body)
        if "file" not in fields or fields.get("purpose", (None, b""))[1] != b"batch":
            self.send_json(h, 400, {"error": {"message": "need file and purpose=batch"}})
            return
        fname, data = fields["file"]
        fid = self._new_file(fname or "upload.jsonl", data)
        self.send_json(h, 200, {"id": fid, "object": "file", "bytes": len(data), "filename": fname, "purpose": "batch"})

    def _content(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        m = re.fullmatch(r"/v1/files/([^/]+)/content", h.path)
        if not m or m.group(1) not in self.files:
            self.send_json(h, 404, {"error": {"message": "no such file"}})
            return
        self.send_bytes(h, 200, self.files[m.group(1)][1])

    def _create(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        body = json.loads(raw)
        if body.get("input_file_id") not in self.files or body.get("endpoint") != "/v1/chat/completions":
            self.send_json(h, 400, {"error": {"message": "bad input_file_id or endpoint"}})
            return
        n = sum(1 for x in self.files[body["input_file_id"]][1].splitlines() if x.strip())
        with self.lock:
            k = self.created
            self.created += 1
            plan = self.batch_script[k] if k < len(self.batch_script) else "complete:1"
            bid = f"batch_{k:04d}"
            over = self.token_cap is not None and self.enqueued() + n * self.tokens_per_request > self.token_cap
            self.batches[bid] = {"id": bid, "object": "batch", "status": "failed" if over else "validating",
                                 "plan": plan, "n": n, "input_file_id": body["input_file_id"], "output_file_id": None,
                                 "error_file_id": None, "completion_window": body.get("completion_window"),
                                 "metadata": body.get("metadata"), "created_at": int(time.time()),
                                 "errors": {"object": "list", "data": [{"code": "token_limit_exceeded", "message":
                                            "Enqueued token limit reached for fake-vlm."}]} if over else None}
            self.max_enqueued = max(self.max_enqueued, self.enqueued())
        if k in self.drop_creates:
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if k in self.hang_creates:
            time.sleep(self.hang_creates[k])
        self.send_json(h, 200, {k2: v for k2, v in self.batches[bid].items() if k2 not in ("plan", "n")})

    def _get(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        bid = h.path.rsplit("/", 1)[-1]
        b = self.batches.get(bid)
        if b is None:
            self.send_json(h, 404, {"error": {"message": "no such batch"}})
            return
        with self.lock:
            self.polls[bid] += 1
            n = self.polls[bid]
        kind, _, after = b["plan"].partition(":")
        if b["status"] not in ("completed", "failed", "expired") and n >= int(after or 1):
            self._run(b, kind)
        elif b["status"] == "validating":
            b["status"] = "in_progress"
        self.send_json(h, 200, {k: v for k, v in b.items() if k not in ("plan", "n")})

    def _run(self, b: dict[str, Any], kind: str) -> None:
        if kind == "fail":
            b["status"] = "failed"
            b["errors"] = {"object": "list", "data": [{"code": "invalid_request", "message": "scripted validation failure"}]}
            return
        lines = [json.loads(x) for x in self.files[b["input_file_id"]][1].decode().splitlines() if x.strip()]
        answered = lines if kind == "complete" else lines[: len(lines) // 2]
        out, err = [], []
        for i, req in enumerate(answered):
            item = self.item_of(req["body"])
            action, _ = self.respond(item, req["body"])
            if action.startswith("slow:") or action in ("close", "drop"):
                action = "ok"
            rid = f"batch_req_{b['id']}_{i}"
            if action in ("ok", "malformed", "badjson") or action.startswith("text:"):
                text = {"ok": self.answer(item), "malformed": "Sorry, prose only.",
                        "badjson": '{"conversations": [{"q'}.get(action, action[5:])
                out.append({"id": rid, "custom_id": req["custom_id"], "error": None,
                            "response": {"status_code": 200, "request_id": f"req_{rid}",
                                         "body": self.completion(item, text, req["body"])}})
            else:
                code = int(action.split(":")[0])
                err.append({"id": rid, "custom_id": req["custom_id"], "error": None,
                            "response": {"status_code": code, "request_id": f"req_{rid}",
                                         "body": {"error": {"message": f"scripted {code}"}}}})
        for j, req in enumerate(lines[len(answered):]):
            err.append({"id": f"batch_req_{b['id']}_x{j}", "custom_id": req["custom_id"], "response": None,
                        "error": {"code": "batch_expired", "message": "This request could not be executed before the "
                                  "completion window expired."}})
        b["output_file_id"] = self._new_file("out.jsonl", "".join(json.dumps(x) + "\n" for x in reversed(out)).encode())
        if err:
            b["error_file_id"] = self._new_file("err.jsonl", "".join(json.dumps(x) + "\n" for x in err).encode())
        b["status"] = "completed" if kind == "complete" else "expired"
