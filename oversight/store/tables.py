"""The store's tables: plain, documented columns that sqlite3, pandas and Datasette read as-is.

JSON-valued columns hold JSON text; an absent value is SQL NULL, never the text 'null'. Times
are UTC ISO-8601 strings. No column ever holds an API key or an auth header: requests are
stored as the messages and parameters sent, nothing else.

SQLAlchemy Core tables, not ORM classes: the store reads and writes rows as dicts, and Core
alone imports in a third of the time (start-up is on the path to a run's first request).

Token and call counts are BigInteger (m007): 64-bit on PostgreSQL, whose INTEGER is 32-bit
(a big run's tokens pass 2**31); SQLite's INTEGER is 64-bit either way. Ids stay Integer.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def document_key(item: dict) -> str | None:
    """The document an item row belongs to: its own `document` (a column, or a field of the
    source row), else "context:" + the first 16 hex of the context's sha256, else None."""
    fields = item.get("fields") or {}
    explicit = item.get("document") or (fields.get("document") if isinstance(fields, dict) else None)
    if explicit:
        return str(explicit)
    context = item.get("context")
    if context:
        return "context:" + hashlib.sha256(context.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return None


metadata = MetaData()

# One batch spec. Re-running the same spec reuses this row and resumes it.
runs = Table(
    "runs", metadata,
    Column("id", String, primary_key=True),  # "<name>-<first 10 hex of spec_hash>"
    Column("name", String, nullable=False),
    Column("spec_path", String),
    Column("spec_toml", String, nullable=False),  # the spec file as written
    Column("spec", JSON),  # the validated, expanded spec
    Column("spec_hash", String, nullable=False, index=True),
    # created | running | finished | incomplete (some failed) | interrupted | budget_exhausted
    Column("status", String, nullable=False, default="created"),
    Column("package_version", String, nullable=False),
    Column("created_at", String, nullable=False, default=utcnow),
    Column("updated_at", String, nullable=False, default=utcnow),
    # What calls cost whose rows went when their episode was redone (after a kill, Ctrl-C or
    # --retry-failed): a budget counts money spent, not only the rows kept. (m003)
    Column("replaced_usd", Float, nullable=False, server_default="0"),
    Column("replaced_tokens", BigInteger, nullable=False, server_default="0"),
    # What produced it: the sha256 of each protocol's source and of every template it
    # rendered in the pre-flight; part of the run's identity (m005).
    Column("code", JSON(none_as_null=True)),
)

# A task as it was when the run read it. (Reshaped by m005: any kind of target.)
items = Table(
    "items", metadata,
    Column("id", String, primary_key=True),  # "<dataset>/<item id>"
    Column("dataset", String, nullable=False, index=True),
    Column("input", String, nullable=False),  # the question, program, statement…
    Column("choices", JSON(none_as_null=True)),  # None: not multiple choice
    Column("target", JSON(none_as_null=True)),  # a choice index, a free-form answer, a label; None: no gold
    Column("kind", String, nullable=False),  # choice | answer | label
    Column("label", String),  # the dataset's label of the item's artefact (e.g. buggy)
    Column("labels", JSON(none_as_null=True)),  # the label set, for label items
    Column("bad_labels", JSON(none_as_null=True)),  # labels meaning the artefact is bad
    Column("context", String),
    Column("source", String, nullable=False, default=""),
    Column("license", String, nullable=False, default=""),
    Column("meta", JSON, default=dict),
    Column("fields", JSON(none_as_null=True)),  # the rest of the source row
    # Items sharing a document (a story, a program) are not independent: intervals resample
    # documents. The dataset's own `document` field, else "context:<sha256 of the context>
    # [:16]", else NULL (the item stands alone). (m006)
    Column("document", String, index=True),
)

# One protocol on one item under one treatment.
episodes = Table(
    "episodes", metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", String, ForeignKey("runs.id"), nullable=False),
    Column("key", String, nullable=False),  # deterministic: hash of protocol, params, item, …
    Column("item_id", String, ForeignKey("items.id"), nullable=False),
    Column("protocol", String, nullable=False, index=True),
    Column("variant", String, nullable=False, default=""),  # sweep point, e.g. "debate[rounds=2]"
    Column("params", JSON),
    Column("assignment", JSON),  # role -> {"answer": i, "correct": bool}
    Column("dispositions", JSON),  # role -> honest | sycophant | schemer | a protocol's own
    Column("treatment", String),  # the schedule's label, e.g. "a_correct", "attack" (m005)
    Column("decides", String),  # the role whose answer is the protocol's (m005)
    # Truth 1, intent: roles told to misbehave (a wrong answer to argue, or a disposition
    # other than honest). (Named `misaligned` before m005.)
    Column("intent", JSON, default=list),
    # Truth 2, outcome: was the artefact actually bad (a wrong answer against gold, a label
    # such as buggy)? None when unknown. (m005)
    Column("outcome", Boolean),
    Column("roles", JSON),  # role -> model alias
    Column("models", JSON),  # alias -> public model config
    Column("seed", Integer, nullable=False, default=0),
    # pending | running | done | failed | interrupted (Ctrl-C, SIGTERM) | stopped (budget reached)
    Column("status", String, nullable=False, default="pending"),
    Column("error", String),
    Column("started_at", String),
    Column("finished_at", String),
    Column("duration_s", Float),
    Column("n_calls", BigInteger, nullable=False, default=0),
    Column("tokens_in", BigInteger, nullable=False, default=0),
    Column("tokens_out", BigInteger, nullable=False, default=0),
    Column("tokens_cached", BigInteger, nullable=False, default=0),  # (m002)
    Column("cost_usd", Float),  # None when some call could not be priced (m002)
    Column("cache_hits", BigInteger, nullable=False, default=0),  # (m002)
    # Who runs it now: a worker id and an expiry in seconds since the epoch, both set and
    # renewed by the database's clock. A live lease is never taken; an expired one (a dead
    # worker) is reclaimed and its partial rows replaced. NULL when no worker holds it. (m004)
    Column("lease_owner", String),
    Column("lease_expires", Float),
    # A re-judging's episode: the stored episode whose transcript it judged again (same item,
    # same truths); NULL for an episode that ran its protocol. (m006)
    Column("source_episode_id", Integer, ForeignKey("episodes.id"), index=True),
    UniqueConstraint("run_id", "key"),
    Index("ix_episodes_run_status", "run_id", "status"),
)

# A message in an episode's transcript, persisted as it is produced.
messages = Table(
    "messages", metadata,
    Column("id", Integer, primary_key=True),
    Column("episode_id", Integer, ForeignKey("episodes.id"), nullable=False, index=True),
    Column("idx", Integer, nullable=False),  # order within the episode
    Column("role", String, nullable=False),
    Column("kind", String, nullable=False, default="speech"),  # speech | question | answer | verdict
    Column("round", Integer),
    Column("model", String),
    Column("content", String, nullable=False),  # what the model wrote
    Column("shown", String, nullable=False),  # what other roles see: quotes marked verified/unverified
    Column("visible_to", JSON(none_as_null=True)),  # None = every role
    Column("quotes", JSON, default=list),
    Column("tokens_in", BigInteger),
    Column("tokens_out", BigInteger),
    Column("latency_s", Float),
    Column("created_at", String, nullable=False, default=utcnow),
    UniqueConstraint("episode_id", "idx"),
)

# Every attempt at a model call, successful or not.
model_calls = Table(
    "model_calls", metadata,
    Column("id", Integer, primary_key=True),
    Column("episode_id", Integer, ForeignKey("episodes.id"), index=True),
    Column("role", String),
    Column("provider", String, nullable=False),
    Column("model", String, nullable=False),
    Column("request", JSON),  # messages and parameters; never a key
    Column("response", JSON(none_as_null=True)),
    Column("text", String),
    Column("tokens_in", BigInteger),
    Column("tokens_out", BigInteger),
    Column("latency_s", Float, nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    Column("error", String),
    Column("created_at", String, nullable=False, default=utcnow),
    Column("tokens_cached", BigInteger),  # (m002)
    Column("tokens_reasoning", BigInteger),  # (m002)
    Column("cost_usd", Float),  # (m002)
    Column("error_kind", String),  # rate_limit, overloaded, timeout, … (m002)
    Column("cache_key", String, index=True),  # (m002)
    Column("cache_hit", Boolean, nullable=False, default=False),  # served from response_cache (m002)
    # The reply's length in characters when it was longer than the model's max_reply_chars
    # and only its head was kept (text, response, message); NULL when stored whole. (m004)
    Column("reply_chars", BigInteger),
)

# Response cache: canonical request hash (with sample index) -> response. (m002)
response_cache = Table(
    "response_cache", metadata,
    Column("key", String, primary_key=True),
    Column("provider", String, nullable=False),
    Column("model", String, nullable=False, index=True),
    Column("request", JSON),  # what the key was computed from
    Column("response", JSON),
    Column("created_at", String, nullable=False, default=utcnow),
)

# Every decision an agent commits to, several per episode (m005; these were `verdicts`, one
# per episode). `parsed = 0` rows are counted and excluded, never scored; `correct` is NULL
# where no gold applies (flags and scores are judged against the episode's truths).
decisions = Table(
    "decisions", metadata,
    Column("id", Integer, primary_key=True),
    Column("episode_id", Integer, ForeignKey("episodes.id"), nullable=False, index=True),
    Column("idx", Integer, nullable=False),  # order within the episode
    Column("role", String, nullable=False),
    Column("kind", String, nullable=False),  # answer | flag | score | label
    Column("name", String, nullable=False),  # answer, flag, suspicion, …
    Column("parsed", Boolean, nullable=False),
    Column("choice", Integer),  # the chosen choice (answer) or label index (label)
    Column("text", String),  # a free-form answer, or the label chosen
    Column("value", Float),  # a score on its scale; 1/0 for a flag
    Column("scale_lo", Float),  # a score's declared scale
    Column("scale_hi", Float),
    Column("probabilities", JSON(none_as_null=True)),  # per choice/label; [P(no), P(yes)] for a flag
    Column("source", String),  # stated | logprobs | elicited
    Column("correct", Boolean),  # against the item's target; NULL if unparsed or no gold applies
    Column("rationale", String),
    Column("raw", String, nullable=False),
    Column("created_at", String, nullable=False, default=utcnow),
    UniqueConstraint("episode_id", "idx"),
)

# Provider batch jobs (OpenAI Batch, Anthropic Message Batches) of models with `batch = true`,
# written before anything is sent so that a process that dies and restarts finds them and
# never sends a request twice (m008). `status`: stored (rows committed, not yet known to the
# provider) | submitted (the provider has it: live) | ended (results read) | expired |
# cancelled | failed (could not be submitted, or the provider failed it) | unsubmitted (found,
# after a crash, never to have reached the provider; its requests went in later batches).
provider_batches = Table(
    "provider_batches", metadata,
    Column("id", Integer, primary_key=True),  # the local batch id
    Column("run_id", String, index=True),  # the run that sent it (informative: requests are
    # recognised by their cache key, whichever run asks)
    Column("provider", String, nullable=False),  # openai | anthropic
    Column("model", String, nullable=False),
    Column("base_url", String),  # the endpoint (NULL: the provider's own API)
    Column("token", String, nullable=False, unique=True),  # random; OpenAI: the batch's metadata
    Column("owner", String, nullable=False),  # host:pid:nonce of the process that sent it
    Column("provider_batch_id", String, index=True),  # NULL until the provider accepted it
    Column("input_file_id", String),  # OpenAI's uploaded JSONL
    Column("status", String, nullable=False),
    Column("provider_status", String),  # what the provider last said (in_progress, ended…)
    Column("n_requests", Integer, nullable=False),
    Column("error", String),
    Column("created_at", String, nullable=False, default=utcnow),
    Column("submitted_at", String),
    Column("finished_at", String),
    Index("ix_provider_batches_endpoint_status", "provider", "model", "status"),
)

# One request in a provider batch (m008). `custom_id` is what the provider knows it by; it is
# the call's response-cache key (the canonical request, model and sample index), so a
# restarted process recognises the same request. `status`: queued | submitted | succeeded |
# errored | expired | cancelled | unsubmitted. `result`: the response (as in response_cache)
# once it arrived; `error`/`error_kind` for a request the batch did not answer.
batch_requests = Table(
    "batch_requests", metadata,
    Column("id", Integer, primary_key=True),
    Column("batch_id", Integer, ForeignKey("provider_batches.id"), nullable=False, index=True),
    Column("custom_id", String, nullable=False),
    Column("cache_key", String, nullable=False, index=True),
    Column("status", String, nullable=False),
    Column("result", JSON(none_as_null=True)),
    Column("error", String),
    Column("error_kind", String),
    Column("finished_at", String),
    UniqueConstraint("batch_id", "custom_id"),
)
