"""The `local` provider: a small model served by llama.cpp in a child process, over HTTP.

Calls go through the same OpenAI client code as any remote server, so the offline default
exercises the real request path. The server runs in its own process (model loading and
llama.cpp's threads stay out of the event loop; a crash cannot take the run down) and is
shared: every LocalProvider with the same (model, ctx, parallel, threads) in a process uses
one server, because two copies of 1 GB of weights would only fight over the same cores.

Options (spec `options`): ctx (tokens per slot, default 4096), parallel (slots, default the
model's concurrency), threads (default 2), start_timeout (seconds, default 120). Any other
option goes to the OpenAI client path unchanged, as it would for the `openai` provider.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import select
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from .base import ModelConfig, ModelRequest, ModelResponse, Provider
from .local_server import READY
from .openai_provider import OpenAIProvider
from .weights import DEFAULT_MODEL, ensure_weights, get_model

SERVER_OPTIONS = ("ctx", "parallel", "threads", "start_timeout")  # consumed here
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding `oversight/`


@dataclass(frozen=True)
class ServerKey:
    model: str
    ctx: int  # per slot
    parallel: int
    threads: int


class LocalServer:
    """Handle on a running `oversight.models.local_server` process."""

    def __init__(self, key: ServerKey, proc: subprocess.Popen, url: str, log, startup: float):
        self.key, self.proc, self.url, self._log = key, proc, url, log
        self.startup_seconds = startup

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (…/v1)."""
        return self.url + "/v1"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        return _tail(self._log, lines)

    def stop(self, timeout: float = 10.0) -> None:
        """Close stdin (the server's cue to exit), then SIGTERM, then SIGKILL."""
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()


def launch_server(name: str = DEFAULT_MODEL, *, ctx: int = 4096, parallel: int = 4,
                  threads: int = 2, timeout: float = 120.0) -> LocalServer:
    """Start a server process and block until it is ready (or raise ModelError)."""
    key = _checked(ServerKey(get_model(name).name, ctx, parallel, threads))
    ensure_weights(key.model)  # here, so a missing package fails with its own clear message
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    if str(_PACKAGE_ROOT) not in {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}:
        # Running from a source checkout: let the child import this same `oversight`.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT),
                                                          env.get("PYTHONPATH")]))
    # llama.cpp logs heavily to stderr: an anonymous temp file keeps it out of the terminal,
    # can never fill a pipe, and still lets a failed start-up show its last lines.
    log = tempfile.TemporaryFile()
    cmd = [sys.executable, "-m", "oversight.models.local_server", "--model", key.model,
           "--port", "0", "--ctx", str(ctx), "--parallel", str(parallel), "--threads", str(threads)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env)
    try:
        url = _read_ready(proc, timeout)
        if url is None:
            # It closed stdout, so it is exiting: let it finish to report its own exit code.
            problem = f"exited during start-up (exit code {_kill(proc, grace=10)})"
        elif url == "":
            problem = (f"was not ready after {timeout:.0f}s (raise options.start_timeout "
                       f"on a slow machine)")
    except BaseException:
        _kill(proc)
        log.close()
        raise
    if not url:
        _kill(proc)
        tail = _tail(log)
        log.close()
        raise ModelError(f"local model server for {key.model!r} {problem}; last log lines:\n{tail}")
    proc.stdout.close()
    return LocalServer(key, proc, url, log, time.monotonic() - t0)


async def start_local_server(name: str = DEFAULT_MODEL, *, ctx: int = 4096, parallel: int = 4,
                             threads: int = 2, timeout: float = 120.0) -> tuple[str, LocalServer]:
    """Start an unshared server without blocking the loop; returns (base_url …/v1, handle).

    The caller owns the handle and must call `handle.stop()`.
    """
    server = await asyncio.to_thread(launch_server, name, ctx=ctx, parallel=parallel,
                                     threads=threads, timeout=timeout)
    return server.base_url, server


class LocalProvider(Provider):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        opts = config.options
        self.key = _checked(ServerKey(get_model(config.model).name, int(opts.get("ctx", 4096)),
                                      int(opts.get("parallel", config.concurrency)),
                                      int(opts.get("threads", 2))))
        self._start_timeout = float(opts.get("start_timeout", 120.0))
        self._server: LocalServer | None = None
        self._inner: OpenAIProvider | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            if self._inner is not None:
                return
            server = await asyncio.to_thread(_acquire, self.key, self._start_timeout)
            inner = OpenAIProvider(self.config.model_copy(update={
                "provider": "openai", "model": self.key.model,
                "base_url": server.base_url, "api_key_env": None,
                "options": {k: v for k, v in self.config.options.items()
                            if k not in SERVER_OPTIONS}}))
            await inner.start()
            self._server, self._inner = server, inner

    async def complete(self, request: ModelRequest) -> ModelResponse:
        await self.start()
        try:
            return await self._inner.complete(request)
        except ModelError:
            server = self._server
            if server is not None and not server.alive:
                raise ModelError(f"local model server for {self.key.model!r} died (exit code "
                                 f"{server.proc.returncode}); last log lines:\n"
                                 f"{server.log_tail()}", kind="server") from None
            raise

    async def aclose(self) -> None:
        async with self._lock:
            inner, server = self._inner, self._server
            self._inner = self._server = None
            if inner is not None:
                await inner.aclose()
            if server is not None:
                await asyncio.to_thread(_release, server)


# --- one shared server per key, reference counted ---------------------------------------

@dataclass
class _Entry:
    server: LocalServer
    refs: int


_shared: dict[ServerKey, _Entry] = {}
_shared_lock = threading.Lock()  # held while launching: two first users must not start two


def _acquire(key: ServerKey, timeout: float) -> LocalServer:
    with _shared_lock:
        entry = _shared.get(key)
        if entry is not None and entry.server.alive:
            entry.refs += 1
            return entry.server
        if entry is not None:  # it died; its users get errors, new users get a new server
            entry.server.stop()
        server = launch_server(key.model, ctx=key.ctx, parallel=key.parallel,
                               threads=key.threads, timeout=timeout)
        _shared[key] = _Entry(server, 1)
        return server


def _release(server: LocalServer) -> None:
    with _shared_lock:
        entry = _shared.get(server.key)
        if entry is None or entry.server is not server:
            server.stop()  # a replaced (dead) server: nothing shares it any more
            return
        entry.refs -= 1
        if entry.refs <= 0:
            del _shared[server.key]
            server.stop()


def shared_servers() -> dict[ServerKey, tuple[LocalServer, int]]:
    """The running shared servers and their user counts (for tests and diagnostics)."""
    with _shared_lock:
        return {k: (e.server, e.refs) for k, e in _shared.items()}


@atexit.register
def _stop_all() -> None:
    # Not strictly needed (a server exits when our end of its stdin closes), but it is tidier
    # to wait for the children than to leave them exiting after us.
    with _shared_lock:
        for entry in _shared.values():
            entry.server.stop()
        _shared.clear()


# --- helpers ------------------------------------------------------------------------------

def _checked(key: ServerKey) -> ServerKey:
    if min(key.ctx, key.parallel, key.threads) < 1:
        raise ModelError(f"local model {key.model!r}: ctx, parallel and threads must be >= 1 "
                         f"(got ctx={key.ctx}, parallel={key.parallel}, threads={key.threads})")
    return key


def _read_ready(proc: subprocess.Popen, timeout: float) -> str | None:
    """The server URL; None if the process closed stdout first; "" on timeout."""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        buf += chunk
        *lines, buf = buf.split(b"\n")  # keep a partial last line for the next read
        for line in lines:
            if line.startswith(READY.encode() + b" "):
                return line.split(None, 1)[1].decode().strip()
    return ""


def _kill(proc: subprocess.Popen, grace: float = 0.0) -> int | None:
    """Exit code after at most `grace` seconds of waiting, then SIGKILL."""
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        return None


def _tail(log, lines: int = 15) -> str:
    try:
        log.flush()
        size = log.seek(0, os.SEEK_END)
        log.seek(max(0, size - 8192))
        text = log.read().decode(errors="replace")
    except (OSError, ValueError):
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"
