"""Episode and Agent: what a protocol works with.

An Episode is one protocol run on one item under one treatment. It owns the transcript and
decides who may see what; every message and every decision is handed to the recorder (the
store) as it is made.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Protocol

from pydantic import BaseModel

from ..models import CallGroup, CallRecord, Model, ModelRequest, ModelResponse, call_group
from ..models.totals import Totals
from ..tasks.items import Item
from . import quotes
from .decisions import Answer, Ask, Decision, Decisions, Flag, Label, Score
from .prompts import PromptLibrary
from .registry import ProtocolDef

# The shared overlays (prompts/_dispositions/); a protocol may add its own (backdoor, collude…)
# in prompts/<protocol>/_dispositions/.
DISPOSITIONS = ("honest", "sycophant", "schemer")

# Messages an agent may see are cut at this transcript length while a simultaneous round
# is open, so no speaker sees another's speech from the same round (asyncio tasks copy it).
_horizon: contextvars.ContextVar[int | None] = contextvars.ContextVar("horizon", default=None)


@dataclass
class Message:
    idx: int
    role: str
    content: str  # what the model wrote
    shown: str  # what others see: quotes marked by the system
    kind: str = "speech"
    round: int | None = None
    visible_to: frozenset[str] | None = None  # None: every role
    quotes: list[dict] = field(default_factory=list)
    model: str | None = None

    def visible_for(self, role: str) -> bool:
        return self.visible_to is None or role in self.visible_to or role == self.role


@dataclass(frozen=True)
class Source:
    """A stored episode being judged again: what its deciding `role` saw (`transcript`), the
    decisions it made, to be asked anew (`asks`), and the episode's outcome truth."""

    episode_id: int
    role: str
    transcript: tuple[Message, ...]
    asks: tuple[Any, ...]
    outcome: bool | None = None


class Recorder(Protocol):
    async def message(self, message: Message, response: ModelResponse | None, latency: float) -> None: ...
    async def call(self, record: CallRecord, role: str) -> None: ...
    async def decision(self, decision: Decision, idx: int) -> None: ...


class NullRecorder:
    async def message(self, message, response, latency):
        pass

    async def call(self, record, role):
        pass

    async def decision(self, decision, idx):
        pass


class Episode:
    def __init__(self, *, item: Item, protocol: ProtocolDef, params: BaseModel,
                 models: dict[str, Model], assignment: dict[str, int],
                 dispositions: dict[str, str], prompts: PromptLibrary,
                 recorder: Recorder | None = None, source: "Source | None" = None):
        self.item = item
        self.protocol = protocol
        self.params = params
        self.assignment = assignment  # role -> choice index it argues for
        self.dispositions = dispositions
        self.prompts = prompts
        self.recorder = recorder or NullRecorder()
        self.source = source  # a stored episode judged again (oversight rejudge), else None
        # A re-judging starts from the stored transcript; it is not recorded again.
        self.transcript: list[Message] = list(source.transcript) if source else []
        self.decisions: list[Decision] = []
        self.blind_item = item.without_context()  # what roles without the context are shown
        self.outcome: bool | None = None  # set by the protocol: was the artefact bad?
        self.usage = Totals()
        self._asked: Counter[tuple[str, ModelRequest]] = Counter()
        self._agents = {role: Agent(self, role, models[role], dispositions.get(role, "honest"))
                        for role in protocol.roles}

    def sample_index(self, model: str, request: ModelRequest) -> int:
        """How many times this episode already sent this exact request: the cache keys on it,
        so repeated sampling at temperature > 0 is not collapsed into one answer."""
        index = self._asked[(model, request)]
        self._asked[(model, request)] += 1
        return index

    def account(self, record: CallRecord) -> None:
        """Totals from every attempt: real calls cost, cache hits only count."""
        self.usage.add(record)

    def totals(self) -> dict[str, Any]:
        u = self.usage
        return {"n_calls": u.calls, "tokens_in": u.tokens_in, "tokens_out": u.tokens_out,
                "tokens_cached": u.tokens_cached, "cost_usd": u.known_cost,
                "cache_hits": u.cache_hits}

    def agents(self, *roles: str) -> tuple["Agent", ...]:
        return tuple(self.agent(r) for r in roles)

    def agent(self, role: str) -> "Agent":
        try:
            return self._agents[role]
        except KeyError:
            raise KeyError(f"protocol {self.protocol.name!r} has no role {role!r}; "
                           f"roles: {', '.join(self.protocol.roles)}") from None

    async def record(self, decision: Decision) -> Decision:
        """Keep a decision (agents' decide/flag/score/label do this themselves)."""
        self.decisions.append(decision)
        await self.recorder.decision(decision, len(self.decisions) - 1)
        return decision

    def decided(self, role: str, kind: str = "answer") -> Decision | None:
        """The last decision of this kind that this role made in the episode."""
        return next((d for d in reversed(self.decisions) if d.role == role and d.kind == kind), None)

    def visible(self, role: str) -> list[Message]:
        horizon = _horizon.get()
        messages = self.transcript if horizon is None else self.transcript[:horizon]
        return [m for m in messages if m.visible_for(role)]

    async def together(self, *turns: Awaitable[Any]) -> list[Any]:
        """Simultaneous turns: none sees the others' messages until all have finished.

        If a turn fails, the others start no new model call; one whose request is already
        with the server is let finish, so its reply and cost are recorded. Then the first
        failure is raised — never a sibling's cancellation, whatever the turn order."""
        group = CallGroup(parent=call_group.get())
        horizon, grouped = _horizon.set(len(self.transcript)), call_group.set(group)
        try:
            tasks = [asyncio.ensure_future(t) for t in turns]
        finally:
            # The tasks copied both when they were created.
            _horizon.reset(horizon)
            call_group.reset(grouped)
        first: asyncio.Task | None = None
        try:
            waiting = set(tasks)
            while waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_EXCEPTION)
                failed = [t for t in tasks if t in done and not t.cancelled() and t.exception()]
                if failed and first is None:
                    first = failed[0]
                    group.abandon(f"a simultaneous turn failed: {first.exception()}")
                    for t in waiting - group.in_flight:  # nothing sent yet: stop them now
                        t.cancel()
        except asyncio.CancelledError:
            # We were cancelled (Ctrl-C, a lost lease): no turn outlives the episode.
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        if first is not None:
            for t in tasks:  # retrieve every outcome: no "exception was never retrieved"
                if not t.cancelled():
                    t.exception()
            raise first.exception()
        return [t.result() for t in tasks]

    async def in_order(self, *turns: Awaitable[Any]) -> list[Any]:
        """Sequential turns: each sees the ones before it."""
        return [await t for t in turns]

    async def post(self, role: str, content: str, *, kind: str = "speech", round: int | None = None,
                   visible_to: tuple[str, ...] | None = None, model: str | None = None,
                   response: ModelResponse | None = None, latency: float = 0.0) -> Message:
        """Append a message. Text from roles that read the context is quote-checked first."""
        if role in self.protocol.context_roles:
            shown, checked = quotes.verify(content, self.item.context)
        else:
            # Roles without the context cannot verify anything: strip any marks they wrote.
            shown, checked = quotes.verify(content, None)
        msg = Message(idx=len(self.transcript), role=role, content=content, shown=shown, kind=kind,
                      round=round, visible_to=frozenset(visible_to) if visible_to else None,
                      quotes=checked, model=model)
        self.transcript.append(msg)
        await self.recorder.message(msg, response, latency)
        return msg


class Agent:
    """A role bound to a model, a template and a disposition."""

    def __init__(self, episode: Episode, role: str, model: Model, disposition: str):
        self.episode, self.role, self.model, self.disposition = episode, role, model, disposition

    @property
    def answer(self) -> int | None:
        """The choice index this role was assigned to argue for (None for judges)."""
        return self.episode.assignment.get(self.role)

    def variables(self, **extra: Any) -> dict[str, Any]:
        ep = self.episode
        item = ep.item
        reads = self.role in ep.protocol.context_roles
        return {
            "protocol": ep.protocol.name, "role": self.role, "disposition": self.disposition,
            "item": item if reads else ep.blind_item, "question": item.input,
            "choices": list(item.choices or ()),
            "letters": item.letters, "answer": self.answer, "positions": dict(ep.assignment),
            "context": item.context if reads else None,
            "transcript": ep.visible(self.role), "params": ep.params.model_dump(), **extra,
        }

    async def _call(self, purpose: str | None, logprobs: bool, max_tokens: int | None,
                    extra: dict[str, Any]) -> tuple[ModelResponse, float]:
        ep = self.episode
        template = ep.prompts.find(ep.protocol.name, self.role, purpose)
        system, user = ep.prompts.render(template, **self.variables(**extra))
        messages = ((("system", system),) if system else ()) + (("user", user),)
        cfg = self.model.config
        request = ModelRequest(messages=messages, max_tokens=max_tokens or cfg.max_tokens,
                               temperature=cfg.temperature, logprobs=logprobs,
                               top_logprobs=5 if logprobs else 0)
        t0 = time.perf_counter()
        response = await self.model.complete(request, sink=self._sink,
                                             sample=ep.sample_index(self.model.name, request))
        return response, time.perf_counter() - t0

    async def _sink(self, record: CallRecord) -> None:
        self.episode.account(record)
        await self.episode.recorder.call(record, self.role)

    async def speak(self, *, round: int | None = None, purpose: str | None = None,
                    kind: str = "speech", visible_to: tuple[str, ...] | None = None,
                    max_tokens: int | None = None, **extra: Any) -> Message:
        """Render this role's template, call the model, verify quotes, append and persist."""
        response, latency = await self._call(purpose, False, max_tokens, {"round": round, **extra})
        return await self.episode.post(self.role, response.text.strip(), kind=kind, round=round,
                                       visible_to=visible_to, model=self.model.name,
                                       response=response, latency=latency)

    async def ask(self, *, round: int | None = None, **extra: Any) -> Message:
        """A question for the others (renders <role>_question.j2)."""
        return await self.speak(round=round, purpose="question", kind="question", **extra)

    async def decide(self, *asks: Ask, purpose: str | None = None,
                     **extra: Any) -> Decision | Decisions:
        """Render the decision template, call the model, parse and record each decision
        asked for. No asks: the answer to the item (a Decision). Several, e.g.
        `decide(Answer(), Flag())`: all from one reply (Decisions). Unparseable ones are
        recorded as such (parsed=False), never raised and never a default."""
        single = not asks
        asks = asks or (Answer(),)
        ep = self.episode
        for ask in asks:
            if isinstance(ask, Label):
                ask.options(ep.item)  # no labels to offer is the protocol's error, before a call
        response, latency = await self._call(purpose, True, None,
                                             {"round": None, "asks": list(asks), **extra})
        text = response.text.strip()
        await ep.post(self.role, text, kind="decision", model=self.model.name,
                      response=response, latency=latency)
        made = []
        for ask in asks:
            d = ask.parse(response.text, ep.item, response.logprobs)
            made.append(await ep.record(replace(d, role=self.role, name=ask.stored_as or d.name)))
        return made[0] if single else Decisions(made)

    async def flag(self, name: str = "flag", **extra: Any) -> Decision:
        """A yes/no flag (yes: the artefact is bad)."""
        return (await self.decide(Flag(name), **extra))[0]

    async def score(self, lo: float = 0, hi: float = 100, name: str = "suspicion",
                    **extra: Any) -> Decision:
        """A score on the scale [lo, hi] (out of scale: unparsed)."""
        return (await self.decide(Score(lo, hi, name), **extra))[0]

    async def label(self, labels: tuple[str, ...] | None = None, name: str = "label",
                    **extra: Any) -> Decision:
        """One of `labels` (default: the item's), with a probability per label where the
        provider returns log-probabilities."""
        return (await self.decide(Label(tuple(labels) if labels else None, name), **extra))[0]
