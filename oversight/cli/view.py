"""`oversight view`: the local, read-only web viewer on a store (oversight/viewer/).

Starlette and uvicorn are imported inside the command, so `oversight --help` stays fast."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import DbOpt, _console, _fail, _store, app

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _listen(host: str, port: int):
    """A socket bound to host:port (port 0: a free one), or exit 2 naming what failed."""
    import socket
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise _fail(f"--host: cannot resolve {host!r} ({exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise _fail(f"--port: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


@app.command()
def view(db: DbOpt = None,
         port: Annotated[int, typer.Option(metavar="N", help="Port to listen on (0: any free one)")] = 8000,
         host: Annotated[str, typer.Option(metavar="ADDRESS", help="Address to listen on; anything "
                                           "but loopback exposes the store to the network")] = "127.0.0.1") -> None:
    """Browse a store in a local web viewer (read-only): runs and their reports, episodes
    filtered and searched, transcripts with checked quotes, comparisons, detection."""
    if not 0 <= port <= 65535:
        raise _fail(f"--port: expected a port number from 0 to 65535, got {port}")
    try:
        import uvicorn

        from ..viewer import create_app
    except ImportError as exc:
        raise _fail(f"the viewer needs its extra: pip install 'oversight[view]' ({exc})") from None
    store = _store(db)  # read-only: a missing or foreign store is exit 2
    sock = _listen(host, port)
    err = _console(stderr=True)
    if host not in LOOPBACK and not host.startswith("127."):
        err.print(f"[bold yellow]warning:[/] listening on {host}, not 127.0.0.1: anyone who can "
                  "reach this machine can read the store (transcripts, prompts, items).",
                  soft_wrap=True)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    err.print(f"oversight view: http://{shown}:{bound_port}/ (read-only; Ctrl-C stops)",
              markup=False)
    config = uvicorn.Config(create_app(store, host=host), log_level="warning",
                            access_log=False, server_header=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        store.close()
