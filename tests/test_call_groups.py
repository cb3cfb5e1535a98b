"""Call groups and cancelled calls: what the episode layer relies on when one of several
simultaneous turns fails. Once a group is abandoned no call in it sends another request
(attempts already in flight may finish), and a call cancelled while its request is out still
leaves a record of that request. The mock provider where HTTP is not the point; the real
openai SDK against the FakeServer where it is.
"""

from __future__ import annotations

import asyncio

import pytest

from oversight.errors import ModelError
from oversight.models import CallGroup, Model, ModelConfig, ModelRequest, call_group
from oversight.testing.fakeserver import FakeServer

GUARD = 60.0  # seconds: only turns a hang into a failure


def mock(**options) -> Model:
    return Model("m", ModelConfig(provider="mock", model="mock", options=options))


def ask(text: str = "Is the sky blue?") -> ModelRequest:
    return ModelRequest(messages=(("user", text),))


async def in_group(group: CallGroup, coro):
    """Run `coro` with `group` as the current call group (as a task would inherit it)."""
    call_group.set(group)
    return await coro


async def until(predicate) -> None:
    async with asyncio.timeout(GUARD):
        while not predicate():
            await asyncio.sleep(0.005)


def test_group_state():
    parent = CallGroup()
    child = CallGroup(parent=parent)
    assert parent.abandoned is None and child.abandoned is None
    parent.abandon("the debater failed")
    parent.abandon("a later reason")
    assert parent.abandoned == child.abandoned == "the debater failed"
    assert CallGroup(parent=child).abandoned == "the debater failed"
    assert call_group.get() is None  # no group unless one is set


@pytest.mark.parametrize("which", ["self", "parent"])
async def test_abandoned_group_sends_nothing(which):
    m = mock()
    parent = CallGroup()
    group = CallGroup(parent=parent)
    (group if which == "self" else parent).abandon("sibling failed")
    records: list = []
    with pytest.raises(ModelError) as info:
        await in_group(group, m.complete(ask(), sink=records.append))
    assert str(info.value) == "abandoned: sibling failed"
    assert (info.value.kind, info.value.retryable) == ("abandoned", False)
    assert m.provider.calls == [] and records == []


async def test_call_in_flight_finishes_and_queued_call_is_refused():
    m = Model("m", ModelConfig(provider="mock", model="mock", concurrency=1,
                               options={"delay": 0.2, "script": ["Answer: A"]}))
    group = CallGroup()
    records: list = []
    first = asyncio.create_task(in_group(group, m.complete(ask("one"), sink=records.append)))
    second = asyncio.create_task(in_group(group, m.complete(ask("two"), sink=records.append)))
    await until(lambda: group.in_flight)
    assert group.in_flight == {first}  # second waits for the only slot
    group.abandon("a sibling turn failed")
    assert (await first).text == "Answer: A"
    with pytest.raises(ModelError, match="abandoned: a sibling turn failed"):
        await second
    assert [c.messages[0][1] for c in m.provider.calls] == ["one"]
    assert [r.error for r in records] == [None]
    assert group.in_flight == set()


async def test_abandoned_group_gets_no_retry():
    """A retryable failure of an attempt that was in flight when the group was abandoned
    is recorded, and then the call stops instead of waiting to retry."""
    async with FakeServer(faults=[{"kind": "server_error", "delay": 0.3}] * 3) as srv:
        m = Model("m", ModelConfig(provider="openai", model="fake-model",
                                   base_url=srv.openai_base_url,
                                   retry={"max_attempts": 3, "backoff_initial": 0.01}))
        group = CallGroup()
        records: list = []
        task = asyncio.create_task(in_group(group, m.complete(ask(), sink=records.append)))
        try:
            await until(lambda: srv.stats["received"] == 1)
            group.abandon("the judge is gone")
            with pytest.raises(ModelError) as info:
                await asyncio.wait_for(task, GUARD)
        finally:
            await m.aclose()
        received = srv.stats["received"]
    assert info.value.kind == "abandoned"
    assert received == 1
    assert [(r.attempt, r.error_kind) for r in records] == [(1, "server")]


async def test_cancelled_call_in_flight_leaves_a_record():
    m = mock(delay=30)
    records: list = []

    async def sink(record):  # an async sink, like the runner's
        records.append(record)

    group = CallGroup()
    task = asyncio.create_task(in_group(group, m.complete(ask(), sink=sink)))
    await until(lambda: group.in_flight)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [record] = records
    assert (record.error, record.error_kind, record.response, record.attempt) == \
        ("cancelled before a reply arrived", "cancelled", None, 1)
    assert group.in_flight == set()


async def test_cancelled_call_over_http_leaves_a_record_per_request():
    async with FakeServer(faults=["timeout"]) as srv:  # holds the request, never answers
        m = Model("m", ModelConfig(provider="openai", model="fake-model",
                                   base_url=srv.openai_base_url))
        records: list = []
        task = asyncio.create_task(m.complete(ask(), sink=records.append))
        try:
            await until(lambda: srv.stats["received"] == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await m.aclose()
        received = srv.stats["received"]
    assert received == len(records) == 1
    assert records[0].error_kind == "cancelled"


async def test_call_cancelled_before_sending_leaves_no_record():
    m = Model("m", ModelConfig(provider="mock", model="mock", concurrency=1,
                               options={"delay": 30}))
    records: list = []
    first = asyncio.create_task(m.complete(ask("one"), sink=records.append))
    second = asyncio.create_task(m.complete(ask("two"), sink=records.append))
    await until(lambda: m.provider.calls)
    second.cancel()  # still waiting for the slot: nothing was sent, nothing to record
    with pytest.raises(asyncio.CancelledError):
        await second
    assert records == []
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert [r.error_kind for r in records] == ["cancelled"]
