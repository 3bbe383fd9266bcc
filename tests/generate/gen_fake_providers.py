"""Fake Anthropic Message Batches and Gemini batch-mode servers (real HTTP on 127.0.0.1), in the shapes the
providers document, for the batch-API tests. Requests inside a batch follow the per-item ``script`` of
:class:`gen_fake_server.FakeOpenAI` (``ok``, ``malformed``, ``400``, ``500``); ``batch_script[k]`` decides
the k-th batch: ``end:N`` ends after N polls, ``expire:N`` ends after N polls with the second half of its
requests expired. ``drop_creates``: the k-th create makes its batch, then drops the connection."""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from gen_fake_server import FAKE_MAGIC, FakeOpenAI

ANTHROPIC_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _item_of_b64(data: str) -> str:
    raw = base64.b64decode(data)
    # test images are a real PNG followed by FAKE_MAGIC and the item id (gen_fake_server.fake_image_bytes)
    return raw.split(FAKE_MAGIC, 1)[1].split(b"\n", 1)[0].decode() if FAKE_MAGIC in raw else "?"


class _Scripted(FakeOpenAI):
    def __init__(self, *, batch_script: list[str] | None = None, drop_creates: set[int] | None = None, **kw: Any):
        super().__init__(**kw)
        self.batch_script = list(batch_script or [])
        self.drop_creates = set(drop_creates or ())
        self.polls: Counter = Counter()
        self.created = 0
        self.headers_seen: list[dict[str, str]] = []

    def plan(self) -> tuple[int, str]:
        with self.lock:
            k = self.created
            self.created += 1
        return k, self.batch_script[k] if k < len(self.batch_script) else "end:1"

    def drop(self, h: BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        h.connection.shutdown(socket.SHUT_RDWR)

    def action(self, item: str) -> str:
        a, _ = self.respond(item, {})
        return "ok" if a.startswith("slow:") or a in ("close", "drop") else a

    def text_for(self, item: str, a: str) -> str:
        return {"ok": self.answer(item), "malformed": "Sorry, prose only."}.get(a, a[5:] if a.startswith("text:") else "")


class FakeAnthropic(_Scripted):
    """``/v1/messages/batches`` (create, list, retrieve, results)."""

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self.batches: dict[str, dict[str, Any]] = {}
        self.requests: dict[str, list[dict[str, Any]]] = {}
        self.results: dict[str, bytes] = {}
        self.extra_routes = {("POST", "/v1/messages/batches"): self._create,
                             ("GET", "/v1/messages/batches?"): self._list,
                             ("GET", "/v1/messages/batches/"): self._get}

    def _auth(self, h: BaseHTTPRequestHandler) -> bool:
        self.headers_seen.append({k.lower(): v for k, v in h.headers.items()})
        if h.headers.get("anthropic-version") != "2023-06-01" or not h.headers.get("x-api-key"):
            self.send_json(h, 401, {"type": "error", "error": {"type": "authentication_error",
                                                               "message": "x-api-key and anthropic-version needed"}})
            return False
        return True

    def _create(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        if not self._auth(h):
            return
        body = json.loads(raw)
        reqs = body.get("requests") or []
        bad = [r for r in reqs if not ANTHROPIC_ID.fullmatch(str(r.get("custom_id")))
               or not {"model", "max_tokens", "messages"} <= set(r.get("params") or {})]
        if not reqs or bad:
            self.send_json(h, 400, {"type": "error", "error": {"type": "invalid_request_error",
                                                               "message": f"bad requests: {bad[:1]}"}})
            return
        k, plan = self.plan()
        bid = f"msgbatch_{k:04d}"
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self.batches[bid] = {"id": bid, "type": "message_batch", "processing_status": "in_progress",
                             "request_counts": {"processing": len(reqs), "succeeded": 0, "errored": 0, "canceled": 0,
                                                "expired": 0},
                             "created_at": now, "ended_at": None, "expires_at": now, "archived_at": None,
                             "cancel_initiated_at": None, "results_url": None, "_plan": plan}
        self.requests[bid] = reqs
        if k in self.drop_creates:
            self.drop(h)
            return
        self.send_json(h, 200, self._public(bid))

    def _public(self, bid: str) -> dict[str, Any]:
        return {k: v for k, v in self.batches[bid].items() if not k.startswith("_")}

    def _list(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        if not self._auth(h):
            return
        q = dict(parse_qsl(urlsplit(h.path).query))
        items = [self._public(b) for b in reversed(list(self.batches))]
        if "after_id" in q:
            ids = [x["id"] for x in items]
            items = items[ids.index(q["after_id"]) + 1:]
        limit = int(q.get("limit", 20))
        page = items[:limit]
        self.send_json(h, 200, {"data": page, "has_more": len(items) > limit,
                                "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None})

    def _get(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        if not self._auth(h):
            return
        parts = urlsplit(h.path).path.split("/")
        bid = parts[4]
        if bid not in self.batches:
            self.send_json(h, 404, {"type": "error", "error": {"type": "not_found_error", "message": "no batch"}})
            return
        if len(parts) > 5 and parts[5] == "results":
            self.send_bytes(h, 200, self.results[bid], "application/binary")
            return
        b = self.batches[bid]
        self.polls[bid] += 1
        kind, _, after = b["_plan"].partition(":")
        if b["processing_status"] != "ended" and self.polls[bid] >= int(after or 1):
            self._end(bid, kind, h)
        self.send_json(h, 200, self._public(bid))

    def _end(self, bid: str, kind: str, h: BaseHTTPRequestHandler) -> None:
        b, reqs = self.batches[bid], self.requests[bid]
        run = reqs if kind == "end" else reqs[: len(reqs) // 2]
        lines, counts = [], Counter()
        for r in reqs:
            p = r["params"]
            if r not in run:
                lines.append({"custom_id": r["custom_id"], "result": {"type": "expired"}})
                counts["expired"] += 1
                continue
            img = p["messages"][0]["content"][0]["source"]
            item = _item_of_b64(img["data"]) if img["type"] == "base64" else img["url"].rsplit("/", 1)[-1]
            a = self.action(item)
            if a in ("ok", "malformed") or a.startswith("text:"):
                lines.append({"custom_id": r["custom_id"], "result": {"type": "succeeded", "message": {
                    "id": f"msg_{bid}_{r['custom_id']}", "type": "message", "role": "assistant", "model": p["model"],
                    "content": [{"type": "text", "text": self.text_for(item, a)}], "stop_reason": "end_turn",
                    "stop_sequence": None, "usage": {"input_tokens": 90, "cache_read_input_tokens": 10,
                                                     "output_tokens": 20}}}})
                counts["succeeded"] += 1
            else:
                et = "invalid_request_error" if a.startswith("4") else "api_error"
                lines.append({"custom_id": r["custom_id"], "result": {"type": "errored", "error": {
                    "type": "error", "error": {"type": et, "message": f"scripted {a}"}}}})
                counts["errored"] += 1
        lines.reverse()
        self.results[bid] = "".join(json.dumps(x) + "\n" for x in lines).encode()
        b["request_counts"] = {"processing": 0, "succeeded": counts["succeeded"], "errored": counts["errored"],
                               "canceled": 0, "expired": counts["expired"]}
        b["processing_status"] = "ended"
        host = h.headers.get("Host")
        b["results_url"] = f"http://{host}/v1/messages/batches/{bid}/results"


class FakeGemini(_Scripted):
    """Gemini batch mode: resumable upload, ``models/{m}:batchGenerateContent``, ``batches`` (get, list),
    file download."""

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self.files: dict[str, tuple[str, bytes]] = {}
        self.uploads: dict[str, str] = {}
        self.ops: dict[str, dict[str, Any]] = {}
        self.extra_routes = {("POST", "/upload/v1beta/files?upload_id="): self._upload_data,
                             ("POST", "/upload/v1beta/files"): self._upload_start,
                             ("GET", "/v1beta/files"): self._list_files,
                             ("POST", "/v1beta/models/"): self._create,
                             ("GET", "/v1beta/batches/"): self._get,
                             ("GET", "/v1beta/batches"): self._list,
                             ("GET", "/download/v1beta/files/"): self._download}

    def start(self) -> str:
        return super().start().rsplit("/", 1)[0] + "/v1beta"

    def _auth(self, h: BaseHTTPRequestHandler) -> bool:
        self.headers_seen.append({k.lower(): v for k, v in h.headers.items()})
        if not h.headers.get("x-goog-api-key"):
            self.send_json(h, 403, {"error": {"code": 403, "message": "no key", "status": "PERMISSION_DENIED"}})
            return False
        return True

    def _upload_start(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        if not self._auth(h):
            return
        if h.headers.get("X-Goog-Upload-Protocol") != "resumable" or h.headers.get("X-Goog-Upload-Command") != "start":
            self.send_json(h, 400, {"error": {"code": 400, "message": "resumable start expected"}})
            return
        uid = str(len(self.uploads))
        self.uploads[uid] = json.loads(raw)["file"]["display_name"]
        host = h.headers.get("Host")
        self.send_json(h, 200, {}, {"x-goog-upload-url": f"http://{host}/upload/v1beta/files?upload_id={uid}"})

    def _upload_data(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        uid = dict(parse_qsl(urlsplit(h.path).query))["upload_id"]
        if h.headers.get("X-Goog-Upload-Command") != "upload, finalize":
            self.send_json(h, 400, {"error": {"code": 400, "message": "upload, finalize expected"}})
            return
        name = f"files/f{len(self.files):03d}"
        self.files[name] = (self.uploads[uid], raw)
        self.send_json(h, 200, {"file": {"name": name, "displayName": self.uploads[uid], "sizeBytes": str(len(raw)),
                                         "mimeType": "application/jsonl", "state": "ACTIVE"}})

    def _list_files(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        if self._auth(h):
            self.send_json(h, 200, {"files": [{"name": n, "displayName": d, "sizeBytes": str(len(b))}
                                              for n, (d, b) in self.files.items()]})

    def _create(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        if not self._auth(h):
            return
        m = re.fullmatch(r"/v1beta/models/([^:]+):batchGenerateContent", urlsplit(h.path).path)
        body = json.loads(raw).get("batch") or {}
        fname = (body.get("input_config") or {}).get("file_name")
        if not m or fname not in self.files:
            self.send_json(h, 400, {"error": {"code": 400, "message": "bad model path or input file"}})
            return
        k, plan = self.plan()
        name = f"batches/b{k:04d}"
        self.ops[name] = {"name": name, "metadata": {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
            "model": f"models/{m.group(1)}", "displayName": body.get("display_name"), "state": "BATCH_STATE_PENDING",
            "inputConfig": {"fileName": fname}}, "_plan": plan, "_file": fname}
        if k in self.drop_creates:
            self.drop(h)
            return
        self.send_json(h, 200, self._public(name))

    def _public(self, name: str) -> dict[str, Any]:
        return {k: v for k, v in self.ops[name].items() if not k.startswith("_")}

    def _list(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        if self._auth(h):
            self.send_json(h, 200, {"operations": [self._public(n) for n in self.ops]})

    def _get(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        if not self._auth(h):
            return
        name = urlsplit(h.path).path.replace("/v1beta/", "", 1)
        if name not in self.ops:
            self.send_json(h, 404, {"error": {"code": 404, "message": "no batch", "status": "NOT_FOUND"}})
            return
        op = self.ops[name]
        self.polls[name] += 1
        kind, _, after = op["_plan"].partition(":")
        if not op.get("done") and self.polls[name] >= int(after or 1):
            self._end(op, kind)
        elif not op.get("done"):
            op["metadata"]["state"] = "BATCH_STATE_RUNNING"
        self.send_json(h, 200, self._public(name))

    def _end(self, op: dict[str, Any], kind: str) -> None:
        lines = [json.loads(x) for x in self.files[op["_file"]][1].decode().splitlines() if x.strip()]
        run = lines if kind == "end" else lines[: len(lines) // 2]
        out = []
        for i, r in enumerate(lines):
            if i >= len(run):
                continue  # expired: no line
            item = _item_of_b64(r["request"]["contents"][0]["parts"][0]["inline_data"]["data"])
            a = self.action(item)
            if a in ("ok", "malformed") or a.startswith("text:"):
                out.append({"key": r["key"], "response": {
                    "candidates": [{"content": {"parts": [{"text": self.text_for(item, a)}], "role": "model"},
                                    "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 20, "totalTokenCount": 120},
                    "modelVersion": "fake", "responseId": f"resp-{op['name']}-{r['key']}"}})
            else:
                out.append({"key": r["key"], "error": {"code": int(a[:3]), "message": f"scripted {a}",
                                                        "status": "INVALID_ARGUMENT"}})
        fname = f"files/batch-{op['name'].split('/')[-1]}"
        self.files[fname] = ("out", "".join(json.dumps(x) + "\n" for x in reversed(out)).encode())
        state = "BATCH_STATE_SUCCEEDED" if kind == "end" else "BATCH_STATE_EXPIRED"
        op["metadata"].update(state=state, output={"responsesFile": fname}, endTime=time.strftime("%Y-%m-%dT%H:%M:%SZ"))
        op["done"] = True
        op["response"] = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput",
                          "responsesFile": fname}

    def _download(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        if not self._auth(h):
            return
        m = re.fullmatch(r"/download/v1beta/(files/[^:]+):download", urlsplit(h.path).path)
        if not m or m.group(1) not in self.files or dict(parse_qsl(urlsplit(h.path).query)).get("alt") != "media":
            self.send_json(h, 404, {"error": {"code": 404, "message": "no file"}})
            return
        self.send_bytes(h, 200, self.files[m.group(1)][1])
