"""What every provider shares about a failed call: the HTTP status table and the `ModelError`s.

`classify_status` turns an HTTP status (plus the body's error code/type/message) into a
`ModelError`'s `kind`/`retryable`; the constructors below build the errors every SDK-based
provider raises alike, and `exception_chain` looks beneath an SDK's wrapping. Each provider
decides what its own SDK's exceptions mean; the retry layer (model.py) only ever sees
`ModelError`, so they all classify HTTP statuses by this one table.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ModelError
from .credentials import redact
from .retry_after import retry_after_seconds

# --------------------------------------------------------------------------- classification

# The usual retryable statuses (classify_status decides, and retries any 5xx).
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})

_CONTEXT_CODES = {"context_length_exceeded", "string_above_max_length", "exceed_context_size_error"}
_CONTEXT_PHRASES = ("prompt is too long", "context length", "context_length", "context window",
                    "context limit", "maximum context", "context size", "too many tokens",
                    "input is too long", "reduce the length of the messages",
                    "exceeds the maximum number of tokens")


def is_context_length(*texts: object) -> bool:
    """Whether an error's code, type or message says the prompt does not fit the context."""
    for text in texts:
        if not text:
            continue
        low = str(text).lower()
        if low in _CONTEXT_CODES or any(p in low for p in _CONTEXT_PHRASES):
            return True
    return False


def classify_status(status: int, *texts: object) -> tuple[str, bool]:
    """(kind, retryable) for an HTTP error status; `texts` are the body's code/type/message.

    Retryable: 408 timeout, 409, 429 rate_limit, 5xx server, 529 (or any 5xx whose body says
    overloaded) overloaded. Fatal: 400/413/422 bad_request or context_length, 401/403 auth,
    404 not_found, any other 4xx other.
    """
    joined = " ".join(str(t) for t in texts if t).lower()
    if status == 429:
        return "rate_limit", True
    if status == 408:
        return "timeout", True
    if status == 409:
        return "server", True
    if status == 529 or (status >= 500 and "overload" in joined):
        return "overloaded", True
    if status >= 500:
        return "server", True
    if status in (400, 413, 422):
        return ("context_length" if is_context_length(*texts) else "bad_request"), False
    if status in (401, 403):
        return "auth", False
    if status == 404:
        return "not_found", False
    return "other", False


# --------------------------------------------------------------------------- errors

def status_error(status: int, kind: str, retryable: bool, message: str,
                 headers: Mapping[str, str] | None, secrets: tuple[str, ...]) -> ModelError:
    """The ModelError for an HTTP error status, its message scrubbed of any key."""
    return ModelError(f"HTTP {status} ({kind}): {redact(message, secrets)[:300]}",
                      retryable=retryable, status=status, kind=kind,
                      retry_after=retry_after_seconds(headers, status=status))


def timed_out(exc: BaseException) -> ModelError:
    """The attempt ran out of time: retried."""
    return ModelError(f"request timed out ({type(exc).__name__})", retryable=True, kind="timeout")


def malformed_body(exc: BaseException, secrets: tuple[str, ...]) -> ModelError:
    """A body that could not be read (JSON, encoding, shape): retried."""
    return ModelError(f"malformed response body ({type(exc).__name__}: "
                      f"{redact(str(exc), secrets)[:200]})", retryable=True, kind="malformed")


def unexpected_error(exc: BaseException, secrets: tuple[str, ...]) -> ModelError:
    """An SDK error none of the above: not retried."""
    return ModelError(f"{type(exc).__name__}: {redact(str(exc), secrets)[:300]}", kind="other")


def exception_chain(exc: BaseException | None) -> list[BaseException]:
    """The exception and everything it was raised from or while handling, outermost first."""
    out: list[BaseException] = []
    while exc is not None and all(exc is not e for e in out) and len(out) < 20:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out
