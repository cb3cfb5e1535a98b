"""What every provider shares about failed calls: the server's wait hint and the error class.

`retry_after_seconds` reads the headers a provider sends with an error, `classify_status`
turns an HTTP status (plus the body's error code/type/message) into a `ModelError`'s
`kind`/`retryable`, and `redact` scrubs a secret from anything a provider returns; the
small constructors below build the `ModelError`s every SDK-based provider raises alike, and
`api_key` reads a key from the environment. The retry layer (model.py) only ever sees
`ModelError`, so every provider must agree on these.
"""

from __future__ import annotations

import email.utils
import math
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ..errors import ModelError

# --------------------------------------------------------------------------- retry-after

_OPENAI_RESETS = ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
_ANTHROPIC_RESETS = ("anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-reset",
                     "anthropic-ratelimit-input-tokens-reset",
                     "anthropic-ratelimit-output-tokens-reset")

# Go-style durations as OpenAI sends them: "1s", "6m0s", "250ms", "1h2m3.5s", "20us".
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|μs|ns|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6,
                 "μs": 1e-6, "ns": 1e-9}


def retry_after_seconds(headers: Mapping[str, str] | None, now: datetime | float | None = None,
                        *, status: int | None = None) -> float | None:
    """The server's own "wait this long" hint in seconds (>= 0), or None if it gave none.

    In order: `retry-after-ms`; `retry-after` (delta-seconds or an HTTP date); OpenAI's
    `x-ratelimit-reset-requests` / `-tokens` (Go durations; the larger of the two); Anthropic's
    `anthropic-ratelimit-*-reset` (RFC 3339 timestamps; the latest of them). Header names are
    case-insensitive; unparseable values are skipped, never raised.

    The rate-limit *reset* headers ride on every response, successes included: they only mean
    "wait" for a rate-limit error. So with a `status` other than 429 they are ignored (a 500
    must not wait for a token bucket six minutes away); with no status they are used.
    `now` (aware datetime or epoch seconds) is for tests; dates count from it.
    """
    if not headers:
        return None
    h = {str(k).lower(): str(v).strip() for k, v in headers.items()}
    now_dt = _now(now)

    value = _number(h.get("retry-after-ms"))
    if value is not None:
        return max(0.0, value / 1000.0)
    raw = h.get("retry-after")
    if raw:
        value = _number(raw)
        if value is None:
            value = _http_date_delta(raw, now_dt)
        if value is not None:
            return max(0.0, value)
    if status is not None and status != 429:
        return None
    waits = [w for w in (_duration(h.get(k)) for k in _OPENAI_RESETS) if w is not None]
    if waits:
        return max(0.0, max(waits))
    waits = [w for w in (_timestamp_delta(h.get(k), now_dt) for k in _ANTHROPIC_RESETS)
             if w is not None]
    if waits:
        return max(0.0, max(waits))
    return None


def _now(now: datetime | float | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if isinstance(now, datetime):
        return now if now.tzinfo else now.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(now), UTC)


def _number(raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _http_date_delta(raw: str, now: datetime) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # RFC 7231 dates are GMT
        when = when.replace(tzinfo=UTC)
    return (when - now).total_seconds()


def _duration(raw: str | None) -> float | None:
    if not raw:
        return None
    value = _number(raw)  # a bare number: seconds
    if value is not None:
        return value
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(raw):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    return total if pos == len(raw) and pos > 0 else None


def _timestamp_delta(raw: str | None, now: datetime) -> float | None:
    if not raw:
        return None
    text = raw.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # fromisoformat takes at most 6 fractional digits: trim nanoseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - now).total_seconds()


# --------------------------------------------------------------------------- classification

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


# --------------------------------------------------------------------------- timeouts

def attempt_timeout(config: Any) -> float:
    """Seconds one attempt may take: options["timeout"], else the config's `timeout`."""
    value = config.options.get("timeout")
    if value is None:
        value = getattr(config, "timeout", None) or 600.0
    return float(value)


# --------------------------------------------------------------------------- secrets

def redact(value: Any, secrets: tuple[str, ...] | list[str]) -> Any:
    """`value` with every occurrence of a secret replaced by "***" (strings, dicts, lists)."""
    secrets = tuple(s for s in secrets if s and len(s) >= 4)
    if not secrets:
        return value
    if isinstance(value, str):
        for s in secrets:
            value = value.replace(s, "***")
        return value
    if isinstance(value, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, secrets) for v in value)
    return value


_MAX_COUNT = 2**63 - 1  # the largest SQLite (and PostgreSQL BIGINT) INTEGER


def as_int(value: Any) -> int | None:
    """A token count from a usage field: an int (not a bool) in [0, 2**63), else None (unknown).
    A negative count would shrink a run's spend and let it overrun its budget; a larger one
    cannot be stored."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_COUNT:
        return value
    return None


def exception_chain(exc: BaseException | None) -> list[BaseException]:
    """The exception and everything it was raised from or while handling, outermost first."""
    out: list[BaseException] = []
    while exc is not None and all(exc is not e for e in out) and len(out) < 20:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def api_key(config: Any, default_env: str | None) -> str | None:
    """The key from the variable the config names (api_key_env), else from the provider's usual
    one (`default_env`) when it talks to the provider's own API. Unset while that API is the
    target is an error before any call; a custom base_url (a local server) may need none."""
    env = config.api_key_env or (default_env if config.base_url is None else None)
    key = os.environ.get(env) if env else None
    if env and not key and config.base_url is None:
        raise ModelError(f"environment variable {env} is not set (needed by model "
                         f"{config.model!r})", kind="auth")
    return key


def timed_out(exc: BaseException) -> ModelError:
    return ModelError(f"request timed out ({type(exc).__name__})", retryable=True, kind="timeout")


def malformed_body(exc: BaseException, secrets: tuple[str, ...]) -> ModelError:
    return ModelError(f"malformed response body ({type(exc).__name__}: "
                      f"{redact(str(exc), secrets)[:200]})", retryable=True, kind="malformed")


def unexpected_error(exc: BaseException, secrets: tuple[str, ...]) -> ModelError:
    """An SDK error none of the above: not retried."""
    return ModelError(f"{type(exc).__name__}: {redact(str(exc), secrets)[:300]}", kind="other")


def status_error(status: int, kind: str, retryable: bool, message: str,
                 headers: Mapping[str, str] | None, secrets: tuple[str, ...]) -> ModelError:
    """The ModelError for an HTTP error status, its message scrubbed of any key."""
    return ModelError(f"HTTP {status} ({kind}): {redact(message, secrets)[:300]}",
                      retryable=retryable, status=status, kind=kind,
                      retry_after=retry_after_seconds(headers, status=status))
