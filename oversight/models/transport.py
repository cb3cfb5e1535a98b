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
    none. A response with Set-Cookie is handled exactly as before."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


def cookies_only_when_set(http: httpx.AsyncClient) -> None:
    """Give `http` the jar above (an httpx without a `_cookies` jar is left as it is)."""
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
