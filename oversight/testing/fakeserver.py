"""A fault-injecting fake OpenAI / Anthropic HTTP server on 127.0.0.1, for tests and benchmarks.

Standard library only: a minimal HTTP/1.1 server on asyncio streams (keep-alive,
Content-Length bodies; no chunked requests) so it can fail exactly as asked, down to resetting
a connection halfway through a body, and stays cheap enough for hundreds of concurrent
keep-alive connections. The real `openai` and `anthropic` SDK clients parse its answers.

    async with FakeServer(latency=0.1, faults=[None, "rate_limit", "reset"]) as srv:
        client = openai.AsyncOpenAI(base_url=srv.openai_base_url, api_key="x", max_retries=0)
        anthropic.AsyncAnthropic(base_url=srv.anthropic_base_url, api_key="x", max_retries=0)

Endpoints: POST /v1/chat/completions, POST /v1/messages, GET /v1/models, and both providers'
batch APIs (files, batches, message batches: fakebatches.py, with their own faults
`batch_faults`, `batch_hold` and `batch_seconds`); anything else 404.
Faults apply to the two completion endpoints only, one per request in arrival order; kinds and
options are in wire.py (FAULT_KINDS). Every fault dict may carry "delay" (seconds, overriding
`latency` for that request) and "headers" (extra response headers); "reset" takes
"after_bytes" (how much of the response to send before the RST; default: the headers and
half the body); "malformed" takes "body" (sent as a 200, e.g. a valid body with odd usage);
"rate_limit"/"rate_limit_date" take "retry_after"; "status" takes "status", "message", "type",
"code"; "context_length" takes "limit"; "trickle" takes "interval" and "chunk" (the body comes
`chunk` bytes every `interval` seconds); "huge" takes "chars" (the reply's length) and
"logprobs" (default false: logprobs of megabytes of text take the server seconds to build).

Each recorded request (`requests`) has "index", "path", "headers", "json", "fault", and "at"
and "done_at": time.monotonic() when it arrived and when the server was done with it (its
answer written, or the connection dropped).

Token counts are whitespace-separated words: prompt = every message text (and Anthropic's
system prompt), completion = the reply, cut to max_tokens words (finish "length"/"max_tokens").

CLI (another process): python -m oversight.testing.fakeserver --port 0 --latency 0.5 \\
    --fault-rate 0.2 --fault-kinds rate_limit,server_error,reset --seed 1 --reply "Answer: A" \\
    [--batch-hold] [--batch-seconds S] [--batch-faults expired,partial,...]
prints "FAKESERVER_READY http://127.0.0.1:PORT", serves until SIGTERM/SIGINT or until its
stdin closes (only watched when stdin is a pipe), then prints "FAKESERVER_STATS {json}" with
the stats and the process's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Self

from . import wire
from .fakebatches import FakeBatches, is_batch_path, normalize_batch_fault
from .wire import ANTHROPIC, OPENAI, http_response, normalize_fault

__all__ = ["DEFAULT_FAULT_KINDS", "DEFAULT_REPLY", "FakeServer", "main"]

DEFAULT_REPLY = "Answer: A\nConfidence: 80%"
DEFAULT_FAULT_KINDS = ("rate_limit", "server_error", "unavailable", "reset")
HOST = "127.0.0.1"

_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST instead of FIN


def _fresh_stats() -> dict:
    # first_at / last_at: wall-clock times (time.time()) of the first request received and the
    # last answer sent, so a benchmark can time a run by the server's clock.
    return {"received": 0, "answered": 0, "faulted": {}, "in_flight": 0, "max_in_flight": 0,
            "connections": 0, "other": 0, "bad_requests": 0, "first_at": None, "last_at": None}


class FakeServer:
    """See the module docstring. Attributes `reply`, `latency`, `rules`, `faults`, `fault_rate`
    and `record` may be changed between requests; `requests` and `stats` are read by tests."""

    def __init__(self, *, reply=DEFAULT_REPLY, latency: float = 0.0, faults=None,
                 fault_rate: float = 0.0, fault_kinds=None, seed: int = 0, rules=None,
                 record: bool = True, port: int = 0, batch_faults=None, batch_hold: bool = False,
                 batch_seconds: float = 0.0):
        self.reply = reply
        self.latency = float(latency)
        self.rules = [(r["match"], r["reply"]) if isinstance(r, Mapping) else tuple(r)
                      for r in rules or ()]
        self.fault_rate = float(fault_rate)
        self.fault_kinds = [normalize_fault(k) for k in (fault_kinds or DEFAULT_FAULT_KINDS)]
        self.seed = seed
        self._rng = random.Random(seed)
        self.faults = faults
        self.record = record
        self.port = port
        self.requests: list[dict] = []
        self.stats = _fresh_stats()
        self._index = 0  # arrival index of completion requests (never reset)
        self._server: asyncio.base_events.Server | None = None
        self._conns: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        # Provider batch endpoints (fakebatches.py): faults per submitted batch (a list,
        # consumed in order, or a callable), whether batches are held unfinished, and how
        # long each takes at least.
        self.batch_faults = (batch_faults if batch_faults is None or callable(batch_faults)
                             else [normalize_batch_fault(f) for f in batch_faults])
        self.batch_hold = batch_hold
        self.batch_seconds = float(batch_seconds)
        self.batches = FakeBatches(self)

    # --- configuration ------------------------------------------------------------------------

    @property
    def faults(self):
        return self._faults

    @faults.setter
    def faults(self, value) -> None:
        """A list is consumed from its start again whenever it is (re)assigned."""
        if value is None or callable(value):
            self._faults, self._queue = value, None
        else:
            self._faults = [normalize_fault(f) for f in value]
            self._queue = deque(self._faults)

    def _next_fault(self, index: int, req) -> dict | None:
        if self._queue is not None:
            return self._queue.popleft() if self._queue else None
        if self._faults is not None:
            return normalize_fault(self._faults(index, req))
        if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
            return dict(self._rng.choice(self.fault_kinds))
        return None

    def clear(self) -> None:
        """Forget recorded requests and counters (in_flight is kept: it is live state)."""
        self.requests.clear()
        in_flight, self.stats = self.stats["in_flight"], _fresh_stats()
        self.stats["in_flight"] = in_flight

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("FakeServer is already running")
        self._server = await asyncio.start_server(self._connection, HOST, self.port,
                                                  backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        """Stop listening and drop every open connection, held "timeout" requests included."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._conns)
        for task, writer in list(self._conns.items()):
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def start_in_thread(self, timeout: float = 10.0) -> Self:
        """Serve from a daemon thread with its own event loop (for sync code and subprocesses)."""
        ready, failure = threading.Event(), []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._thread_loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.aclose())
                loop.close()

        self._thread = threading.Thread(target=run, name="fakeserver", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("FakeServer thread did not start")
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        thread, loop = self._thread, self._thread_loop
        if thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = self._thread_loop = None

    def __enter__(self) -> Self:
        return self.start_in_thread()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- HTTP ---------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        self._conns[task] = writer
        self.stats["connections"] += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    writer.write(http_response(431, b"{}", False, None))
                    break
                lines = head.decode("latin-1").split("\r\n")
                method, _, rest = lines[0].partition(" ")
                target, _, version = rest.partition(" ")
                headers = {}
                for line in lines[1:-2]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    writer.write(http_response(411, b"{}", False, None))
                    break
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                conn = headers.get("connection", "").lower()
                keep = conn != "close" and (version == "HTTP/1.1" or conn == "keep-alive")
                keep = await self._dispatch(method, target.partition("?")[0], headers, body,
                                            reader, writer, keep)
                if not keep:
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass  # the client went away, or sent something this server does not speak
        except asyncio.CancelledError:
            pass  # aclose(); ending normally also spares 3.11's stream callback a traceback
        finally:
            self._conns.pop(task, None)
            if not writer.transport.is_closing():
                writer.close()

    async def _dispatch(self, method, path, headers, body, reader, writer, keep) -> bool:
        if method == "POST" and path == "/v1/chat/completions":
            return await self._complete(OPENAI, path, headers, body, reader, writer, keep)
        if method == "POST" and path == "/v1/messages":
            return await self._complete(ANTHROPIC, path, headers, body, reader, writer, keep)
        self.stats["other"] += 1
        if is_batch_path(path):
            return await self.batches.handle(method, path, headers, body, writer, keep)
        if method == "GET" and path == "/v1/models":
            writer.write(http_response(200, wire.MODELS_BODY, keep, None))
        else:
            api = ANTHROPIC if "anthropic-version" in headers else OPENAI
            message = f"fakeserver has no route {method} {path}"
            out = wire.error_body(api, 404, message=message)
            writer.write(http_response(404, out, keep, None))
        return keep

    async def _complete(self, api, path, headers, body, reader, writer, keep) -> bool:
        st = self.stats
        arrived, log = time.monotonic(), None
        index, self._index = self._index, self._index + 1
        st["received"] += 1
        if st["first_at"] is None:
            st["first_at"] = time.time()
        st["in_flight"] += 1
        st["max_in_flight"] = max(st["max_in_flight"], st["in_flight"])
        try:
            try:
                req = json.loads(body)
            except ValueError:
                req = None
            if not isinstance(req, dict):
                st["bad_requests"] += 1
                if self.record:
                    self.requests.append(log := {"index": index, "path": path, "at": arrived,
                                                 "headers": headers, "json": None, "fault": None})
                out = wire.error_body(api, 400, message="request body is not a JSON object")
                writer.write(http_response(400, out, keep, None))
                return keep
            fault = self._next_fault(index, req)
            if self.record:
                self.requests.append(log := {"index": index, "path": path, "at": arrived,
                                             "headers": headers, "json": req, "fault": fault})
            if fault is None:
                kind, delay = None, self.latency
            else:
                kind, delay = fault["kind"], float(fault.get("delay", self.latency))
                st["faulted"][kind] = st["faulted"].get(kind, 0) + 1
            if kind == "timeout":
                await self._hold(reader)
                return False
            if delay > 0:
                await asyncio.sleep(delay)
            texts = wire.request_texts(req)
            prompt_tokens = wire.count_tokens(texts)
            extra = fault.get("headers") if fault else None
            if kind in wire.ERROR_KINDS:
                status, extra, out = wire.fault_response(api, fault, prompt_tokens, index)
                writer.write(http_response(status, out, keep, extra))
                return keep
            if kind == "malformed":
                out = fault.get("body", wire.MALFORMED_BODY)
                writer.write(http_response(200, out.encode() if isinstance(out, str) else out,
                                       keep, extra))
                return keep
            out = self._body(api, index, req, texts, prompt_tokens, fault)
            if kind == "reset":
                self._reset(writer, http_response(200, out, keep, extra), len(out), fault)
                return False
            data = http_response(200, out, keep, extra)
            if kind == "trickle":
                if not await self._trickle(writer, data, len(out), fault):
                    return False
            else:
                writer.write(data)
            if kind is None or kind in wire.ANSWER_KINDS:
                st["answered"] += 1
                st["last_at"] = time.time()
            return keep
        finally:
            st["in_flight"] -= 1
            if log is not None:
                log["done_at"] = time.monotonic()

    def _body(self, api, index, req, texts, prompt_tokens, fault) -> bytes:
        kind = fault["kind"] if fault else None
        text = self._reply_text(req, texts)
        model = req.get("model")
        model = model if isinstance(model, str) else "fake-model"
        usage, choices = kind != "no_usage", kind != "empty_choices"
        max_tokens = _int(req.get("max_completion_tokens")) or _int(req.get("max_tokens"))
        if kind == "huge":  # a server that ignores max_tokens
            text, max_tokens = wire.huge_text(int(fault.get("chars", 1_000_000))), None
        if api == ANTHROPIC:
            return wire.anthropic_body(index, model, text, prompt_tokens, usage=usage,
                                       choices=choices, max_tokens=max_tokens)
        top = None
        if req.get("logprobs") and (kind != "huge" or fault.get("logprobs")):
            top = max(0, min(20, _int(req.get("top_logprobs")) or 0))
        return wire.openai_body(index, model, text, prompt_tokens, max_tokens=max_tokens,
                                top_logprobs=top, usage=usage, choices=choices)

    def _reply_text(self, req, texts) -> str:
        reply = self.reply
        if self.rules:
            prompt = "\n".join(texts)
            for substring, rule_reply in self.rules:
                if substring in prompt:
                    reply = rule_reply
                    break
        return str(reply(req)) if callable(reply) else reply

    @staticmethod
    async def _hold(reader: asyncio.StreamReader) -> None:
        """Never answer: wait until the client hangs up (or the server stops)."""
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass

    @staticmethod
    async def _trickle(writer: asyncio.StreamWriter, data: bytes, body_len: int,
                       fault: dict) -> bool:
        """The headers at once, then the body `chunk` bytes every `interval` seconds.
        False if the client went away first."""
        interval = float(fault.get("interval", 0.5))
        chunk = max(1, int(fault.get("chunk", 1)))
        pos = len(data) - body_len
        writer.write(data[:pos])
        while pos < len(data):
            await writer.drain()
            await asyncio.sleep(interval)
            if writer.transport.is_closing():
                return False
            writer.write(data[pos:pos + chunk])
            pos += chunk
        return True

    @staticmethod
    def _reset(writer: asyncio.StreamWriter, data: bytes, body_len: int, fault: dict) -> None:
        cut = fault.get("after_bytes")
        if cut is None:
            cut = len(data) - body_len + body_len // 2
        if cut > 0:
            writer.write(data[:cut])  # the write buffer is empty: this goes straight to the kernel
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
            except OSError:
                pass
        writer.transport.abort()


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- CLI ------------------------------------------------------------------------------------

def _stdin_is_pipe() -> bool:
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class _StdinWatch(asyncio.Protocol):
    """Sets `stop` when the parent closes our stdin pipe (so an orphaned server exits)."""

    def __init__(self, stop: asyncio.Event):
        self.stop = stop

    def connection_lost(self, exc) -> None:
        self.stop.set()


async def _serve(server: FakeServer) -> None:
    loop, stop = asyncio.get_running_loop(), asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if _stdin_is_pipe():
        await loop.connect_read_pipe(lambda: _StdinWatch(stop), sys.stdin)
    async with server:
        print(f"FAKESERVER_READY {server.url}", flush=True)
        await stop.wait()
    stats = {**server.stats, "cpu_seconds": round(time.process_time(), 4)}
    print("FAKESERVER_STATS " + json.dumps(stats), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m oversight.testing.fakeserver",
                                     description="Fault-injecting fake OpenAI/Anthropic server "
                                                 "on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before answering")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-kinds", default=",".join(DEFAULT_FAULT_KINDS),
                        help="comma-separated fault kinds drawn at --fault-rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reply", default=DEFAULT_REPLY, help=r"reply text; \n is a newline")
    parser.add_argument("--batch-hold", action="store_true",
                        help="hold provider batches unfinished until POST /_fake/batches/release")
    parser.add_argument("--batch-seconds", type=float, default=0.0,
                        help="a provider batch finishes no sooner than this after it was created")
    parser.add_argument("--batch-faults", default="",
                        help="comma-separated batch faults, one per submitted batch in order "
                             "(expired, cancelled, partial, failed, slow; '-' for none)")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.fault_kinds.split(",") if k.strip()]
    batch_faults = [None if k.strip() == "-" else k.strip()
                    for k in args.batch_faults.split(",") if k.strip()]
    server = FakeServer(reply=args.reply.replace("\\n", "\n"), latency=args.latency,
                        fault_rate=args.fault_rate, fault_kinds=kinds, seed=args.seed,
                        record=False, port=args.port, batch_faults=batch_faults or None,
                        batch_hold=args.batch_hold, batch_seconds=args.batch_seconds)
    asyncio.run(_serve(server))


if __name__ == "__main__":
    main()
