"""What the providers' HTTP clients share: a cookie jar that costs nothing when no cookie is
set, and telling a dropped connection from a timeout under the aiohttp transport."""

from __future__ import annotations

import httpx

from .failures import exception_chain

_DISCONNECTS = ("ServerDisconnectedError", "ClientOSError", "ClientConnectorError",
                "ConnectionResetError", "ConnectionRefusedError", "BrokenPipeError")


class _CookiesWhenSet(httpx.Cookies):
    """The client's cookie jar, read only from responses that set a cookie: httpx otherwise
    wraps every response for the standard library's cookie parser (~0.1 ms a call) to find
    none. A response with Set-Cookie (or the obsolete Set-Cookie2) is handled as before."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers or "set-cookie2" in response.headers:
            super().extract_cookies(response)


def cookies_only_when_set(http: httpx.AsyncClient) -> None:
    """Give an httpx client the jar above. Any other client is left as it is: httpx2 (the
    Anthropic SDK's from 2.14) checks for the header itself, and an httpx without a
    `_cookies` jar has nothing to replace."""
    jar = getattr(http, "_cookies", None)
    if type(jar) is httpx.Cookies:
        http._cookies = _CookiesWhenSet(jar.jar)


def disconnect(exc: BaseException) -> str | None:
    """The name of the error beneath a transport failure when the peer dropped or refused the
    connection (httpx-aiohttp may call that a timeout), else None."""
    return next((type(e).__name__ for e in exception_chain(exc)
                 if type(e).__name__ in _DISCONNECTS), None)


def undecodable(exc: BaseException) -> bool:
    """Whether a transport failure is a body that could not be decoded (e.g. bad gzip)."""
    return any(isinstance(e, httpx.DecodingError) for e in exception_chain(exc))
