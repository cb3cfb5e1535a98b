"""Wire formats for the fake server (fakeserver.py): HTTP/1.1 response framing, OpenAI chat
completions and Anthropic messages, their error bodies, and the fault vocabulary.

Bodies are built from string templates rather than json.dumps of nested dicts so the hot path
of a benchmark costs a few microseconds; only the variable parts (ids, the echoed model, the
reply text, token counts) are JSON-encoded, and reply texts are cached.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Mapping
from functools import lru_cache

OPENAI, ANTHROPIC = "openai", "anthropic"

# Every kind a fault dict may name. "slow" is a normal answer after fault["delay"] seconds;
# "trickle" a normal answer whose body comes fault["chunk"] bytes (default 1) every
# fault["interval"] seconds (default 0.5); "huge" a normal answer whose reply is fault["chars"]
# characters long (default 1,000,000), whatever max_tokens asked for.
FAULT_KINDS = frozenset({
    "status", "rate_limit", "rate_limit_date", "overloaded", "server_error", "bad_gateway",
    "unavailable", "timeout", "reset", "malformed", "empty_choices", "no_usage",
    "context_length", "auth", "slow", "trickle", "huge",
})
# Kinds answered 200 with a well-formed body (counted in stats["answered"]).
ANSWER_KINDS = frozenset({"slow", "trickle", "huge"})

# Kinds answered with an error status: kind -> status (overloaded depends on the wire format).
_KIND_STATUS = {"rate_limit": 429, "rate_limit_date": 429, "server_error": 500, "bad_gateway": 502,
                "unavailable": 503, "context_length": 400, "auth": 401}
ERROR_KINDS = frozenset(_KIND_STATUS) | {"status", "overloaded"}

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
           411: "Length Required", 413: "Payload Too Large", 422: "Unprocessable Entity",
           429: "Too Many Requests", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout", 529: "Overloaded"}

# status -> (type, code, message) as api.openai.com words them.
_OPENAI_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", "permission_denied", "You are not allowed to use this model."),
    404: ("invalid_request_error", "model_not_found",
          "The model does not exist or you do not have access to it."),
    408: ("timeout", None, "Request timed out."),
    409: ("invalid_request_error", "conflict", "Another request conflicts with this one."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Try again later."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: ("server_error", "service_unavailable", "The server is overloaded or not ready yet."),
    504: ("server_error", "timeout", "Gateway timeout."),
}
# status -> (type, message) as api.anthropic.com words them.
_ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    408: ("timeout_error", "Request timed out."),
    409: ("invalid_request_error", "Another request conflicts with this one."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    502: ("api_error", "Bad gateway"),
    503: ("api_error", "Service unavailable"),
    504: ("timeout_error", "Gateway timeout"),
    529: ("overloaded_error", "Overloaded"),
}

MODELS_BODY = json.dumps({
    "object": "list", "has_more": False, "first_id": "fake-model", "last_id": "fake-model",
    "data": [{"id": "fake-model", "object": "model", "type": "model", "created": 0,
              "created_at": "2024-01-01T00:00:00Z", "owned_by": "fakeserver",
              "display_name": "Fake model"}],
}).encode()
MALFORMED_BODY = b'{"id": "chatcmpl-fake", "choices": [{"index": 0, "message": {"content": "Answ'

_HEAD = {status: f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n".encode()
         for status, reason in REASONS.items()}


def http_response(status: int, body: bytes, keep: bool, extra: Mapping[str, str] | None) -> bytes:
    """A whole HTTP/1.1 response with a Content-Length body, in one bytes object."""
    head = _HEAD.get(status) or (f"HTTP/1.1 {status} Error\r\n"
                                 "content-type: application/json\r\n").encode()
    head += b"content-length: %d\r\n" % len(body)
    if extra:
        head += "".join(f"{k}: {v}\r\n" for k, v in extra.items()).encode("latin-1")
    if not keep:
        head += b"connection: close\r\n"
    return head + b"\r\n" + body


def normalize_fault(fault) -> dict | None:
    """A fault as a fresh dict with a known "kind"; a bare kind string is shorthand."""
    if fault is None:
        return None
    if isinstance(fault, str):
        fault = {"kind": fault}
    elif isinstance(fault, Mapping):
        fault = dict(fault)
    else:
        raise TypeError(f"a fault is None, a kind string or a dict, not {type(fault).__name__}")
    kind = fault.get("kind")
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(sorted(FAULT_KINDS))}")
    if kind == "status" and not isinstance(fault.get("status"), int):
        raise ValueError("a 'status' fault needs an integer 'status'")
    return fault


# --- request side ---------------------------------------------------------------------------

def _texts(content, out: list[str]) -> None:
    if isinstance(content, str):
        out.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                out.append(part["text"])


def request_texts(req) -> list[str]:
    """The system prompt (Anthropic's top-level one) and every message's text, in order."""
    out: list[str] = []
    if not isinstance(req, Mapping):
        return out
    _texts(req.get("system"), out)
    for message in req.get("messages") or ():
        if isinstance(message, Mapping):
            _texts(message.get("content"), out)
    return out


def count_tokens(texts: list[str]) -> int:
    """The fake tokenizer: whitespace-separated words (deterministic, so tests can assert it)."""
    return sum(len(t.split()) for t in texts)


# --- replies ---------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*\S+")


def split_tokens(text: str) -> list[str]:
    """Reply tokens: each word with the whitespace before it, so "".join(tokens) is the text."""
    return _TOKEN.findall(text)


def huge_text(chars: int) -> str:
    """A reply of exactly `chars` characters: "Answer: A. " over and over."""
    unit = "Answer: A. "
    return (unit * (chars // len(unit) + 1))[:chars]


@lru_cache(maxsize=512)
def reply_parts(text: str, max_tokens: int | None) -> tuple[str, int, bool, str]:
    """(JSON-encoded text, token count, truncated?, the text) for a reply under max_tokens."""
    n = len(text.split())
    if max_tokens is not None and 0 <= max_tokens < n:
        text, n = "".join(split_tokens(text)[:max_tokens]), max_tokens
        return json.dumps(text), n, True, text
    return json.dumps(text), n, False, text


@lru_cache(maxsize=256)
def json_str(value: str) -> str:
    return json.dumps(value)


# Probability of the chosen token, then of each alternative (halving); they sum below 1.
_LOGPROBS = [math.log(0.75)] + [math.log(0.25 * 0.5 ** i) for i in range(1, 21)]
_FILLERS = (" the", " a", ",", ".", "\n", " and", " of", " to", " is", " in", ":", " it",
            " that", " for", " on", " with", " as", " be", " at", " by", " or")


def _alternatives(tok: str) -> list[str]:
    core = tok.lstrip()
    lead = tok[: len(tok) - len(core)]
    if len(core) == 1 and "A" <= core <= "Z":
        pool = [lead + c for c in "ABCDEFGHIJ"]
    elif core.rstrip("%").isdigit() and core.rstrip("%"):
        num, pct = int(core.rstrip("%")), "%" if core.endswith("%") else ""
        pool = [f"{lead}{num + d}{pct}" for d in (-10, 10, -5, 5, -20, 20, -1, 1) if num + d >= 0]
    else:
        pool = [lead + core.lower(), lead + core.upper(), lead + core.capitalize(),
                core if lead else " " + core, lead + core + ".", lead + core + ","]
    pool += _FILLERS
    seen, out = {tok}, []
    for cand in pool:
        if cand not in seen:
            seen.add(cand)
            out.append(cand)
    return out


def _entry(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8", "surrogatepass"))}


@lru_cache(maxsize=256)
def logprobs_json(text: str, top: int) -> str:
    """choices[0].logprobs: one entry per token; `top` candidates each, the chosen one first."""
    content = []
    for tok in split_tokens(text):
        entry = _entry(tok, _LOGPROBS[0])
        cands = [tok, *_alternatives(tok)][:top]
        entry["top_logprobs"] = [_entry(c, _LOGPROBS[i]) for i, c in enumerate(cands)]
        content.append(entry)
    return json.dumps({"content": content, "refusal": None})


_OA_HEAD = '{"id":"chatcmpl-fake%d","object":"chat.completion","created":%d,"model":%s,"choices":['
_OA_CHOICE = ('{"index":0,"message":{"role":"assistant","content":%s,"refusal":null,'
              '"annotations":[]},"logprobs":%s,"finish_reason":"%s"}')
_OA_USAGE = (',"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,'
             '"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
             '"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
             '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}')
_OA_TAIL = ',"service_tier":"default","system_fingerprint":"fp_fakeserver"}'

_AN_HEAD = '{"id":"msg_fake%d","type":"message","role":"assistant","model":%s,"content":['
_AN_BLOCK = '{"type":"text","text":%s}'
_AN_STOP = '],"stop_reason":"%s","stop_sequence":null'
_AN_USAGE = (',"usage":{"input_tokens":%d,"output_tokens":%d,"cache_creation_input_tokens":0,'
             '"cache_read_input_tokens":0,"service_tier":"standard"}')


def openai_body(rid: int, model: str, text: str, prompt_tokens: int, *, max_tokens=None,
                top_logprobs: int | None = None, usage: bool = True, choices: bool = True) -> bytes:
    jtext, n, cut, text = reply_parts(text, max_tokens)
    parts = [_OA_HEAD % (rid, int(time.time()), json_str(model))]
    if choices:
        lp = logprobs_json(text, top_logprobs) if top_logprobs is not None else "null"
        parts.append(_OA_CHOICE % (jtext, lp, "length" if cut else "stop"))
    parts.append("]")
    if usage:
        parts.append(_OA_USAGE % (prompt_tokens, n, prompt_tokens + n))
    parts.append(_OA_TAIL)
    return "".join(parts).encode()


def anthropic_body(rid: int, model: str, text: str, prompt_tokens: int, *, max_tokens=None,
                   usage: bool = True, choices: bool = True) -> bytes:
    jtext, n, cut, _ = reply_parts(text, max_tokens)
    parts = [_AN_HEAD % (rid, json_str(model))]
    if choices:
        parts.append(_AN_BLOCK % jtext)
    parts.append(_AN_STOP % ("max_tokens" if cut else "end_turn"))
    if usage:
        parts.append(_AN_USAGE % (prompt_tokens, n))
    parts.append("}")
    return "".join(parts).encode()


# --- errors ----------------------------------------------------------------------------------

def error_body(wire: str, status: int, *, message: str | None = None, type: str | None = None,
               code: str | None = None, param: str | None = None, rid: int = 0) -> bytes:
    if wire == ANTHROPIC:
        etype, emsg = _ANTHROPIC_ERRORS.get(
            status, ("api_error" if status >= 500 else "invalid_request_error", f"HTTP {status}"))
        return json.dumps({"type": "error", "error": {"type": type or etype,
                                                     "message": message or emsg},
                           "request_id": f"req_fake{rid}"}).encode()
    etype, ecode, emsg = _OPENAI_ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None,
                 f"HTTP {status}"))
    return json.dumps({"error": {"message": message or emsg, "type": type or etype,
                                 "param": param, "code": code or ecode}}).encode()


def fault_response(wire: str, fault: dict, prompt_tokens: int, rid: int
                   ) -> tuple[int, dict[str, str], bytes]:
    """(status, extra headers, body) for an error-status fault (kind in ERROR_KINDS)."""
    kind = fault["kind"]
    if kind == "status":
        status = fault["status"]
    elif kind == "overloaded":
        status = 529 if wire == ANTHROPIC else 503
    else:
        status = _KIND_STATUS[kind]
    headers: dict[str, str] = {}
    if kind == "rate_limit":
        headers["retry-after"] = str(fault.get("retry_after", "0.05"))
    elif kind == "rate_limit_date":
        when = math.ceil(time.time() + float(fault.get("retry_after", 1)))
        headers["retry-after"] = email.utils.formatdate(when, usegmt=True)
    headers.update(fault.get("headers") or {})
    kw = {k: fault[k] for k in ("message", "type", "code") if k in fault}
    if kind == "context_length":
        limit = int(fault.get("limit", 200_000 if wire == ANTHROPIC else 128_000))
        used = max(prompt_tokens, limit + 1)
        if wire == ANTHROPIC:
            kw.setdefault("message", f"prompt is too long: {used} tokens > {limit} maximum")
        else:
            kw.setdefault("message", f"This model's maximum context length is {limit} tokens. "
                          f"However, your messages resulted in {used} tokens. Please reduce "
                          "the length of the messages.")
            kw.setdefault("code", "context_length_exceeded")
            kw["param"] = "messages"
    return status, headers, error_body(wire, status, rid=rid, **kw)
