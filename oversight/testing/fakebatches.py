"""The fake server's provider batch endpoints (fakeserver.py routes them here), both wire formats.

OpenAI:    POST /v1/files (multipart, purpose batch), GET /v1/files/{id}, GET /v1/files/{id}/content,
           POST /v1/batches, GET /v1/batches/{id}, POST /v1/batches/{id}/cancel, GET /v1/batches
Anthropic: POST /v1/messages/batches, GET /v1/messages/batches/{id},
           GET /v1/messages/batches/{id}/results (JSONL), POST /v1/messages/batches/{id}/cancel,
           GET /v1/messages/batches
Control (for a test in another process): GET /_fake/batches (what was submitted, every batch's
status), POST /_fake/batches/release (stop holding: held batches finish at their next poll),
POST /_fake/batches/hold.

Each batched request is answered with the ordinary endpoints' reply logic (reply, rules,
max_tokens, token counts), when its batch finishes. A batch finishes at the first poll
(retrieve, list or results) unless the server holds batches (`batch_hold`), `batch_seconds`
have not passed since it was created, or its fault says otherwise. Batch faults, one per
submitted batch in order (`batch_faults`: a list, consumed, or a callable (index, custom
ids) -> fault), as a kind string or a dict:

- "slow": finishes only after {"polls": N} polls and/or {"seconds": S} seconds;
- "expired": ends expired; the first {"done": N} requests (default 0) answered, the rest not;
- "cancelled": ends cancelled (as if cancelled by someone else), the first "done" answered;
- "partial": the requests at {"fail": [indices]} (default: every second one) get an error
  ({"status": 500} by default; e.g. 400 for a non-retryable one), the others answers;
- "failed": the provider fails the whole batch (OpenAI status failed; Anthropic: every
  request errored).

A batch cancelled by the client ends cancelled at its next poll, nothing answered.

`submitted` records every batch as it was accepted ({"provider", "batch_id", "custom_ids",
"metadata"}); `submitted_ids()` every custom id in order, so a test can assert that none was
sent twice.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import time
from datetime import datetime, timezone
from typing import Any

from . import wire
from .wire import ANTHROPIC, OPENAI

BATCH_FAULT_KINDS = frozenset({"slow", "expired", "cancelled", "partial", "failed"})

_PREFIXES = ("/v1/files", "/v1/batches", "/v1/messages/batches", "/_fake/")


def is_batch_path(path: str) -> bool:
    return path.startswith(_PREFIXES)


def normalize_batch_fault(fault) -> dict | None:
    if fault is None:
        return None
    fault = {"kind": fault} if isinstance(fault, str) else dict(fault)
    if fault.get("kind") not in BATCH_FAULT_KINDS:
        raise ValueError(f"unknown batch fault {fault.get('kind')!r}; known: "
                         f"{', '.join(sorted(BATCH_FAULT_KINDS))}")
    return fault


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def _response(status: int, body: bytes, keep: bool, content_type: str = "application/json") -> bytes:
    reason = wire.REASONS.get(status, "Error")
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\n").encode()
    if not keep:
        head += b"connection: close\r\n"
    return head + b"\r\n" + body


class _Batch:
    def __init__(self, provider: str, batch_id: str, requests: list[tuple[str, dict]],
                 fault: dict | None, metadata: dict | None = None, input_file_id: str | None = None):
        self.provider, self.id, self.requests, self.fault = provider, batch_id, requests, fault
        self.metadata, self.input_file_id = metadata, input_file_id
        self.created = time.time()
        self.polls = 0
        self.state = "in_progress"  # in_progress | cancelling | ended
        self.outcome: str | None = None  # completed | expired | cancelled | failed
        self.cancel_at: float | None = None
        self.ended_at: float | None = None
        # custom id -> ("ok", body bytes) | ("error", status, type, message) | ("expired",) | ("cancelled",)
        self.results: dict[str, tuple] = {}
        self.output_file_id: str | None = None
        self.error_file_id: str | None = None


class FakeBatches:
    """Batch state of one FakeServer; see the module docstring."""

    def __init__(self, server: Any):
        self.server = server
        self.files: dict[str, dict] = {}
        self.batches: dict[str, _Batch] = {}
        self.submitted: list[dict] = []
        self._n = 0
        self._faults_seen = 0

    def submitted_ids(self) -> list[str]:
        return [cid for entry in self.submitted for cid in entry["custom_ids"]]

    def _next_id(self) -> int:
        self._n += 1
        return self._n

    def _fault(self, custom_ids: list[str]) -> dict | None:
        faults = self.server.batch_faults
        index, self._faults_seen = self._faults_seen, self._faults_seen + 1
        if faults is None:
            return None
        if callable(faults):
            return normalize_batch_fault(faults(index, custom_ids))
        return normalize_batch_fault(faults.pop(0)) if faults else None

    # --- HTTP ---------------------------------------------------------------------------------

    async def handle(self, method: str, path: str, headers: dict, body: bytes, writer, keep: bool) -> bool:
        api = ANTHROPIC if path.startswith("/v1/messages/") else OPENAI
        parts = path.strip("/").split("/")
        try:
            status, out, ctype = self._route(method, parts, headers, body)
        except _HTTPError as exc:
            status, out, ctype = exc.status, wire.error_body(api, exc.status, message=exc.message), "application/json"
        writer.write(_response(status, out, keep, ctype))
        return keep

    def _route(self, method: str, parts: list[str], headers: dict, body: bytes):
        n = len(parts)
        if parts[0] == "_fake":
            return self._control(method, parts)
        if parts[1] == "files":
            if method == "POST" and n == 2:
                return self._upload(headers, body)
            if method == "GET" and n == 3:
                return 200, json.dumps(self._file_object(self._file(parts[2]))).encode(), "application/json"
            if method == "GET" and n == 4 and parts[3] == "content":
                return 200, self._file(parts[2])["bytes"], "application/octet-stream"
        elif parts[1] == "batches":
            if method == "POST" and n == 2:
                return self._create_openai(_json(body))
            if method == "GET" and n == 2:
                return self._list(OPENAI)
            batch = self._batch(parts[2], OPENAI)
            if method == "GET" and n == 3:
                self._advance(batch)
                return 200, self._object(batch), "application/json"
            if method == "POST" and n == 4 and parts[3] == "cancel":
                return 200, self._cancel(batch), "application/json"
        elif parts[1] == "messages" and n >= 3 and parts[2] == "batches":
            if method == "POST" and n == 3:
                return self._create_anthropic(_json(body))
            if method == "GET" and n == 3:
                return self._list(ANTHROPIC)
            batch = self._batch(parts[3], ANTHROPIC)
            if method == "GET" and n == 4:
                self._advance(batch)
                return 200, self._object(batch), "application/json"
            if method == "GET" and n == 5 and parts[4] == "results":
                self._advance(batch)
                if batch.state != "ended":
                    raise _HTTPError(400, f"batch {batch.id} has not ended yet")
                return 200, self._anthropic_results(batch), "application/x-jsonl"
            if method == "POST" and n == 5 and parts[4] == "cancel":
                return 200, self._cancel(batch), "application/json"
        raise _HTTPError(404, f"fakeserver has no route {method} /{'/'.join(parts)}")

    def _control(self, method: str, parts: list[str]):
        if parts[1:] == ["batches"] and method == "GET":
            out = {"submitted": self.submitted, "hold": self.server.batch_hold,
                   "batches": [{"id": b.id, "provider": b.provider, "state": b.state,
                                "outcome": b.outcome, "requests": len(b.requests), "polls": b.polls}
                               for b in self.batches.values()]}
            return 200, json.dumps(out).encode(), "application/json"
        if parts[1:] == ["batches", "release"] and method == "POST":
            self.server.batch_hold = False
            return 200, b'{"hold": false}', "application/json"
        if parts[1:] == ["batches", "hold"] and method == "POST":
            self.server.batch_hold = True
            return 200, b'{"hold": true}', "application/json"
        raise _HTTPError(404, "no such control route")

    # --- files --------------------------------------------------------------------------------

    def _upload(self, headers: dict, body: bytes):
        ctype = headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise _HTTPError(400, "expected multipart/form-data")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + body)
        fields, data, filename = {}, None, "upload"
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name == "file":
                data = part.get_payload(decode=True) or b""
                filename = part.get_filename() or filename
            elif name:
                fields[name] = (part.get_payload(decode=True) or b"").decode()
        if data is None:
            raise _HTTPError(400, "no file in the upload")
        file_id = f"file-fake{self._next_id()}"
        self.files[file_id] = {"id": file_id, "bytes": data, "filename": filename,
                               "purpose": fields.get("purpose", "batch"), "created_at": int(time.time())}
        return 200, json.dumps(self._file_object(self.files[file_id])).encode(), "application/json"

    def _file(self, file_id: str) -> dict:
        if file_id not in self.files:
            raise _HTTPError(404, f"No such File object: {file_id}")
        return self.files[file_id]

    @staticmethod
    def _file_object(f: dict) -> dict:
        return {"id": f["id"], "object": "file", "bytes": len(f["bytes"]), "created_at": f["created_at"],
                "filename": f["filename"], "purpose": f["purpose"], "status": "processed",
                "expires_at": None, "status_details": None}

    def _new_file(self, lines: list[dict], purpose: str) -> str:
        file_id = f"file-fake{self._next_id()}"
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        self.files[file_id] = {"id": file_id, "bytes": data, "filename": f"{file_id}.jsonl",
                               "purpose": purpose, "created_at": int(time.time())}
        return file_id

    # --- batches ------------------------------------------------------------------------------

    def _create_openai(self, req: dict):
        file_id = req.get("input_file_id")
        if req.get("endpoint") != "/v1/chat/completions":
            raise _HTTPError(400, "this fake server batches /v1/chat/completions only")
        data = self._file(file_id)["bytes"]
        requests = []
        for number, line in enumerate(data.decode().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                requests.append((str(row["custom_id"]), dict(row["body"])))
            except (ValueError, KeyError, TypeError):
                raise _HTTPError(400, f"line {number} of {file_id} is not a batch request") from None
        batch = self._create(OPENAI, f"batch_fake{self._next_id()}", requests,
                             metadata=req.get("metadata"), input_file_id=file_id)
        return 200, self._object(batch), "application/json"

    def _create_anthropic(self, req: dict):
        raw = req.get("requests")
        if not isinstance(raw, list) or not raw:
            raise _HTTPError(400, "requests: expected a non-empty list")
        try:
            requests = [(str(r["custom_id"]), dict(r["params"])) for r in raw]
        except (KeyError, TypeError):
            raise _HTTPError(400, "each request needs custom_id and params") from None
        batch = self._create(ANTHROPIC, f"msgbatch_fake{self._next_id()}", requests)
        return 200, self._object(batch), "application/json"

    def _create(self, provider: str, batch_id: str, requests: list[tuple[str, dict]], **kw) -> _Batch:
        ids = [cid for cid, _ in requests]
        if len(set(ids)) != len(ids):
            raise _HTTPError(400, "custom_id values must be unique within a batch")
        batch = _Batch(provider, batch_id, requests, self._fault(ids), **kw)
        self.batches[batch_id] = batch
        self.submitted.append({"provider": provider, "batch_id": batch_id, "custom_ids": ids,
                               "metadata": kw.get("metadata")})
        return batch

    def _batch(self, batch_id: str, provider: str) -> _Batch:
        batch = self.batches.get(batch_id)
        if batch is None or batch.provider != provider:
            raise _HTTPError(404, f"No batch found with id '{batch_id}'")
        return batch

    def _list(self, provider: str):
        batches = [b for b in reversed(self.batches.values()) if b.provider == provider]
        for b in batches:
            self._advance(b)
        data = [json.loads(self._object(b)) for b in batches]
        out = {"object": "list", "data": data, "has_more": False,
               "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
        return 200, json.dumps(out).encode(), "application/json"

    def _cancel(self, batch: _Batch) -> bytes:
        if batch.state == "in_progress":
            batch.state, batch.cancel_at = "cancelling", time.time()
        return self._object(batch)

    def _advance(self, batch: _Batch) -> None:
        """A poll: finish the batch if nothing holds it back any more."""
        if batch.state == "ended":
            return
        batch.polls += 1
        if batch.state == "cancelling":
            return self._finish(batch, "cancelled", done=0)
        if self.server.batch_hold:
            return
        fault = batch.fault or {}
        kind = fault.get("kind")
        age = time.time() - batch.created
        if age < float(fault.get("seconds", 0)) or batch.polls < int(fault.get("polls", 0)):
            return
        if age < self.server.batch_seconds:
            return
        outcome = {"expired": "expired", "cancelled": "cancelled", "failed": "failed"}.get(kind, "completed")
        self._finish(batch, outcome, done=int(fault.get("done", 0)))

    def _finish(self, batch: _Batch, outcome: str, done: int) -> None:
        fault = batch.fault or {}
        fail: set[int] = set()
        if fault.get("kind") == "partial":
            fail = set(fault.get("fail", range(1, len(batch.requests), 2)))
        srv = self.server
        for i, (custom_id, req) in enumerate(batch.requests):
            if outcome in ("expired", "cancelled") and i >= done:
                batch.results[custom_id] = (outcome,)
            elif outcome == "failed":
                batch.results[custom_id] = ("error", 500, "api_error", "the batch failed")
            elif i in fail:
                status = int(fault.get("status", 500))
                batch.results[custom_id] = ("error", status, None,
                                            fault.get("message", f"fake batch error {status}"))
            else:
                texts = wire.request_texts(req)
                index, srv._index = srv._index, srv._index + 1
                batch.results[custom_id] = ("ok", srv._body(batch.provider, index, req, texts,
                                                           wire.count_tokens(texts), None))
        batch.state, batch.outcome, batch.ended_at = "ended", outcome, time.time()
        if batch.provider == OPENAI and outcome != "failed":
            ok = [self._openai_line(cid, r) for cid, r in batch.results.items() if r[0] == "ok"]
            bad = [self._openai_line(cid, r) for cid, r in batch.results.items() if r[0] != "ok"]
            batch.output_file_id = self._new_file(ok, "batch_output") if ok else None
            batch.error_file_id = self._new_file(bad, "batch_output") if bad else None

    def _openai_line(self, custom_id: str, result: tuple) -> dict:
        n = self._next_id()
        line = {"id": f"batch_req_fake{n}", "custom_id": custom_id, "response": None, "error": None}
        if result[0] == "ok":
            line["response"] = {"status_code": 200, "request_id": f"req_fake{n}",
                                "body": json.loads(result[1])}
        elif result[0] == "error":
            _, status, etype, message = result
            line["response"] = {"status_code": status, "request_id": f"req_fake{n}",
                                "body": json.loads(wire.error_body(OPENAI, status, message=message,
                                                                   type=etype))}
        else:
            code = f"batch_{result[0]}"
            line["error"] = {"code": code, "message": f"This request was not executed: the batch {result[0]}."}
        return line

    def _anthropic_results(self, batch: _Batch) -> bytes:
        lines = []
        for custom_id, result in batch.results.items():
            if result[0] == "ok":
                body = {"type": "succeeded", "message": json.loads(result[1])}
            elif result[0] == "error":
                _, status, etype, message = result
                body = {"type": "errored", "error": json.loads(
                    wire.error_body(ANTHROPIC, status, message=message, type=etype))}
            else:
                body = {"type": "canceled" if result[0] == "cancelled" else "expired"}
            lines.append(json.dumps({"custom_id": custom_id, "result": body}))
        return ("\n".join(lines) + "\n").encode()

    def _counts(self, batch: _Batch) -> dict[str, int]:
        kinds = [r[0] for r in batch.results.values()]
        return {"ok": kinds.count("ok"), "error": kinds.count("error"),
                "expired": kinds.count("expired"), "cancelled": kinds.count("cancelled")}

    def _object(self, batch: _Batch) -> bytes:
        c, ended = self._counts(batch), batch.ended_at
        if batch.provider == OPENAI:
            status = batch.outcome if batch.state == "ended" else batch.state
            when = {"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at",
                    "failed": "failed_at"}
            obj = {"id": batch.id, "object": "batch", "endpoint": "/v1/chat/completions",
                   "errors": None, "input_file_id": batch.input_file_id, "completion_window": "24h",
                   "status": status, "output_file_id": batch.output_file_id,
                   "error_file_id": batch.error_file_id, "created_at": int(batch.created),
                   "in_progress_at": int(batch.created), "expires_at": int(batch.created) + 86400,
                   "finalizing_at": None, "completed_at": None, "failed_at": None,
                   "expired_at": None, "cancelling_at": batch.cancel_at and int(batch.cancel_at),
                   "cancelled_at": None, "metadata": batch.metadata,
                   "request_counts": {"total": len(batch.requests), "completed": c["ok"],
                                      "failed": c["error"] + c["expired"] + c["cancelled"]}}
            if batch.state == "ended":
                obj[when[batch.outcome]] = int(ended)
            if batch.outcome == "failed":
                obj["errors"] = {"object": "list", "data": [
                    {"code": "fake_failure", "message": "the fake server failed this batch",
                     "param": None, "line": None}]}
            return json.dumps(obj).encode()
        processing = len(batch.requests) if batch.state != "ended" else 0
        obj = {"id": batch.id, "type": "message_batch",
               "processing_status": "ended" if batch.state == "ended" else
               ("canceling" if batch.state == "cancelling" else "in_progress"),
               "request_counts": {"processing": processing, "succeeded": c["ok"],
                                  "errored": c["error"], "canceled": c["cancelled"],
                                  "expired": c["expired"]},
               "created_at": _iso(batch.created), "expires_at": _iso(batch.created + 86400),
               "ended_at": _iso(ended), "archived_at": None,
               "cancel_initiated_at": _iso(batch.cancel_at),
               "results_url": (f"{self.server.url}/v1/messages/batches/{batch.id}/results"
                               if batch.state == "ended" else None)}
        return json.dumps(obj).encode()


class _HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _json(body: bytes) -> dict:
    try:
        value = json.loads(body)
    except ValueError:
        raise _HTTPError(400, "request body is not JSON") from None
    if not isinstance(value, dict):
        raise _HTTPError(400, "request body is not a JSON object")
    return value
