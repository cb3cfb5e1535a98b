"""The store's tables: plain, documented columns that sqlite3, pandas and Datasette read as-is.

JSON-valued columns hold JSON text; an absent value is SQL NULL, never the text 'null'. Times
are UTC ISO-8601 strings. No column ever holds an API key or an auth header: requests are
stored as the messages and parameters sent, nothing else.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Run(SQLModel, table=True):
    """One batch spec. Re-running the same spec reuses this row and resumes it."""

    __tablename__ = "runs"
    id: str = Field(primary_key=True)  # "<name>-<first 10 hex of spec_hash>"
    name: str
    spec_path: str | None = None
    spec_toml: str  # the spec file as written
    spec: dict = Field(sa_column=Column(JSON))  # the validated, expanded spec
    spec_hash: str = Field(index=True)
    # created | running | finished | incomplete (some failed) | interrupted | budget_exhausted
    status: str = "created"
    package_version: str
    created_at: str = Field(default_factory=utcnow)
    updated_at: str = Field(default_factory=utcnow)


class ItemRow(SQLModel, table=True):
    """A question as it was when the run read it."""

    __tablename__ = "items"
    id: str = Field(primary_key=True)  # "<dataset>/<item id>"
    dataset: str = Field(index=True)
    question: str
    choices: list = Field(sa_column=Column(JSON))
    answer_index: int
    context: str | None = None
    source: str = ""
    license: str = ""
    meta: dict = Field(default_factory=dict, sa_column=Column(JSON))


class EpisodeRow(SQLModel, table=True):
    """One protocol on one item under one assignment."""

    __tablename__ = "episodes"
    __table_args__ = (UniqueConstraint("run_id", "key"), Index("ix_episodes_run_status", "run_id", "status"))
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="runs.id")
    key: str  # deterministic: hash of protocol, params, item, assignment, roles, seed
    item_id: str = Field(foreign_key="items.id")
    protocol: str = Field(index=True)
    variant: str = ""  # human label of the sweep point, e.g. "debate[rounds=2]"
    params: dict = Field(sa_column=Column(JSON))
    assignment: dict = Field(sa_column=Column(JSON))  # role -> {"answer": i, "correct": bool}
    dispositions: dict = Field(sa_column=Column(JSON))  # role -> honest|sycophant|schemer
    misaligned: list = Field(default_factory=list, sa_column=Column(JSON))  # ground truth roles
    roles: dict = Field(sa_column=Column(JSON))  # role -> model alias
    models: dict = Field(sa_column=Column(JSON))  # alias -> public model config
    seed: int = 0
    # pending | running | done | failed | interrupted (Ctrl-C) | stopped (budget reached)
    status: str = "pending"
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    n_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0  # (m002)
    cost_usd: float | None = None  # None when some call could not be priced (m002)
    cache_hits: int = 0  # (m002)


class MessageRow(SQLModel, table=True):
    """A message in an episode's transcript, persisted as it is produced."""

    __tablename__ = "messages"
    __table_args__ = (UniqueConstraint("episode_id", "idx"),)
    id: int | None = Field(default=None, primary_key=True)
    episode_id: int = Field(foreign_key="episodes.id", index=True)
    idx: int  # order within the episode
    role: str
    kind: str = "speech"  # speech | question | answer | verdict
    round: int | None = None
    model: str | None = None
    content: str  # what the model wrote
    shown: str  # what other roles are shown: quotes marked verified/unverified by the system
    visible_to: list | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))  # None = every role
    quotes: list = Field(default_factory=list, sa_column=Column(JSON))
    tokens_in: int | None = None
    tokens_out: int | None = None
    latency_s: float | None = None
    created_at: str = Field(default_factory=utcnow)


class ModelCallRow(SQLModel, table=True):
    """Every attempt at a model call, successful or not."""

    __tablename__ = "model_calls"
    id: int | None = Field(default=None, primary_key=True)
    episode_id: int | None = Field(default=None, foreign_key="episodes.id", index=True)
    role: str | None = None
    provider: str
    model: str
    request: dict = Field(sa_column=Column(JSON))  # messages and parameters; never a key
    response: dict | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    text: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    latency_s: float
    attempt: int = 1
    error: str | None = None
    created_at: str = Field(default_factory=utcnow)
    tokens_cached: int | None = None  # (m002)
    tokens_reasoning: int | None = None  # (m002)
    cost_usd: float | None = None  # (m002)
    error_kind: str | None = None  # rate_limit, overloaded, timeout, … (m002)
    cache_key: str | None = Field(default=None, index=True)  # (m002)
    cache_hit: bool = False  # served from response_cache, no call made (m002)


class CacheEntry(SQLModel, table=True):
    """Response cache: canonical request hash (with sample index) -> response. (m002)"""

    __tablename__ = "response_cache"
    key: str = Field(primary_key=True)
    provider: str
    model: str = Field(index=True)
    request: dict = Field(sa_column=Column(JSON))  # what the key was computed from
    response: dict = Field(sa_column=Column(JSON))
    created_at: str = Field(default_factory=utcnow)


class VerdictRow(SQLModel, table=True):
    """The overseer's decision. `parsed = 0` rows are counted and excluded, never scored."""

    __tablename__ = "verdicts"
    id: int | None = Field(default=None, primary_key=True)
    episode_id: int = Field(foreign_key="episodes.id", unique=True)
    role: str
    parsed: bool
    chosen: int | None = None
    probabilities: list | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    prob_source: str | None = None  # logprobs | elicited | None
    correct: bool | None = None  # None when unparsed
    flagged: bool | None = None
    suspicion: float | None = None
    rationale: str | None = None
    raw: str
    created_at: str = Field(default_factory=utcnow)
