"""The viewer's Starlette app: routes (pages.py), templates, static files, and the guards.

Safe by construction: Jinja2 autoescapes every value (model output is hostile input); every
response carries a Content-Security-Policy without inline scripts or styles; anything but GET
and HEAD answers 405; Host headers other than the bound address are refused (no DNS
rebinding onto a local store); the store is opened read-only by the caller.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from . import format as fmt
from . import pages
from .figures import Figures
from .queries import Reader

HERE = Path(__file__).resolve().parent
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
HEADERS = [(b"content-security-policy", CSP.encode()),
           (b"x-content-type-options", b"nosniff"),
           (b"x-frame-options", b"DENY"),
           (b"referrer-policy", b"no-referrer"),
           (b"cross-origin-opener-policy", b"same-origin"),
           (b"cache-control", b"no-store")]
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class Guard:
    """ASGI middleware: GET and HEAD only (405 with `Allow` otherwise, on every path), and
    the security headers on every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in HEADERS if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if scope["method"] not in ("GET", "HEAD"):
            body = b"405 Method Not Allowed: this viewer is read-only (GET only)\n"
            await with_headers({"type": "http.response.start", "status": 405, "headers": [
                (b"allow", b"GET, HEAD"), (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, with_headers)


def _templates() -> Jinja2Templates:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=fmt.pct, num=fmt.num, usd=fmt.usd, count=fmt.count,
                       letter=fmt.letter, when=fmt.when, secs=fmt.secs, budget=fmt.budget,
                       value=fmt.value, interval=fmt.interval, param=fmt.param)
    env.globals.update(qs=lambda pairs: urlencode(list(pairs)), role_class=fmt.role_class)
    return Jinja2Templates(env=env)


def allowed_hosts(host: str) -> list[str]:
    """The Host headers the app answers: the loopback names when bound to loopback, else any
    (a server bound to a public address is reached by names the app cannot know)."""
    if host in LOOPBACK or host.startswith("127."):
        return ["127.0.0.1", "localhost", "::1", "[::1]", host, "testserver"]
    return ["*"]


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette):
    """Start computing the first pages' facets in the background: a big store's first
    episodes page then need not wait for them."""
    threading.Thread(target=_quietly, args=(app.state.reader.warm,), daemon=True).start()
    yield


def _quietly(work) -> None:
    try:
        work()
    except Exception:  # noqa: BLE001 - the request that needs it will raise it
        pass


def create_app(store, *, host: str = "127.0.0.1") -> Starlette:
    """The viewer on an open store (open it with `Store(url, readonly=True)`)."""
    routes = [
        Route("/", pages.runs_page, name="runs"),
        Route("/run", pages.run_page, name="run"),
        Route("/episodes", pages.episodes_page, name="episodes"),
        Route("/episode/{episode_id:int}", pages.episode_page, name="episode"),
        Route("/compare", pages.compare_page, name="compare"),
        Route("/compare/episodes", pages.side_by_side_page, name="side_by_side"),
        Route("/detection", pages.detection_page, name="detection"),
        Route("/plot/{name:str}.png", pages.plot_png, name="plot"),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers=pages.ERROR_HANDLERS, lifespan=_lifespan,
                    middleware=[
        Middleware(Guard), Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(host))])
    reader = Reader(store)
    app.state.reader = reader
    app.state.figures = Figures(reader)
    app.state.templates = _templates()
    app.state.store_name = fmt.store_name(store.url)
    return app
