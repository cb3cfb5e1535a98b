"""The server's own "wait this long" hint, read from the headers sent with a failed call."""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime

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
