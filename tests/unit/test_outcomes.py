"""The replica's writer of deferred outcomes, on a broker that records what it is asked
to write (the Redis side, ``ServeBroker.complete*``, runs in the integration tests)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from actors.runtime import outcomes
from actors.runtime.outcomes import OutcomeWriter
from tests.cluster import poll

TIMEOUT_S = 10


class Message:
    def __init__(self, name: str) -> None:
        self.name = name
        self.outcome: bytes | None = None
        self.deferred = False


class RecordingBroker:
    """Records each write: from which loop (None: a plain thread) and what."""

    url = "redis://127.0.0.1:1/0"  # never connected to: the writes are recorded here

    def __init__(self) -> None:
        self.writes: list[tuple[asyncio.AbstractEventLoop | None, list[tuple[str, bytes]]]] = []
        self.unreachable = 0  # how many writes fail first, as if Redis were down

    def _record(self, loop: asyncio.AbstractEventLoop | None, done: list[tuple[Any, bytes]]) -> bool:
        if self.unreachable:
            self.unreachable -= 1
            return False
        self.writes.append((loop, [(m.name, outcome) for m, outcome in done]))
        return True

    def complete(self, done: list[tuple[Any, bytes]]) -> bool:
        return self._record(None, done)

    async def complete_async(self, client: Any, done: list[tuple[Any, bytes]]) -> bool:
        return self._record(asyncio.get_running_loop(), done)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT_S)
        loop.close()


@pytest.fixture
def broker() -> RecordingBroker:
    return RecordingBroker()


@pytest.fixture
def writer(broker: RecordingBroker, loop: asyncio.AbstractEventLoop) -> Iterator[OutcomeWriter]:
    writer = OutcomeWriter(broker)  # type: ignore[arg-type]  # a recording stand-in for ServeBroker
    try:
        yield writer
    finally:
        writer.close()


def test_ready_outcomes_are_written_by_the_writers_thread_together(writer: OutcomeWriter,
                                                                   broker: RecordingBroker) -> None:
    """A sync method's outcome is ready when its actor returns. It is not left to the
    consumer's ack (a round trip per message on the thread that takes messages): the
    writer's thread writes it, with every other outcome ready by then, in one write."""
    messages = [Message(name) for name in "abcd"]
    with writer._cond:  # the thread is held while they settle, as under load
        for i, message in enumerate(messages):
            ready: concurrent.futures.Future[bytes] = concurrent.futures.Future()
            ready.set_result(str(i).encode())
            writer.settle(message, ready)
        assert all(m.deferred and m.outcome is None for m in messages)  # the ack must leave them alone
    poll(lambda: broker.writes, timeout_s=TIMEOUT_S, what="the write")
    assert broker.writes == [(None, [("a", b"0"), ("b", b"1"), ("c", b"2"), ("d", b"3")])]


def test_outcomes_resolved_in_one_loop_step_are_written_together_from_that_loop(
        writer: OutcomeWriter, broker: RecordingBroker, loop: asyncio.AbstractEventLoop) -> None:
    messages = [Message(name) for name in "abc"]
    pending = [concurrent.futures.Future[bytes]() for _ in messages]
    for message, outcome in zip(messages, pending):
        writer.settle(message, outcome)
    assert all(m.deferred and m.outcome is None for m in messages)  # the ack must leave them alone

    def resolve_all() -> None:  # one step of the loop
        for i, outcome in enumerate(pending):
            outcome.set_result(str(i).encode())

    loop.call_soon_threadsafe(resolve_all)
    poll(lambda: broker.writes, timeout_s=TIMEOUT_S, what="the write")
    assert broker.writes == [(loop, [("a", b"0"), ("b", b"1"), ("c", b"2")])]


def test_an_outcome_resolved_off_any_loop_is_written_by_the_thread(writer: OutcomeWriter,
                                                                   broker: RecordingBroker) -> None:
    message, pending = Message("a"), concurrent.futures.Future[bytes]()
    writer.settle(message, pending)
    pending.set_result(b"cancelled")  # as a cancellation heard on the events thread does
    poll(lambda: broker.writes, timeout_s=TIMEOUT_S, what="the write")
    assert broker.writes == [(None, [("a", b"cancelled")])]


def test_outcomes_are_written_again_once_redis_is_back(writer: OutcomeWriter, broker: RecordingBroker,
                                                       loop: asyncio.AbstractEventLoop,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outcomes, "RETRY_S", 0.01)
    broker.unreachable = 2  # the loop's write, then the thread's first attempt
    message, pending = Message("a"), concurrent.futures.Future[bytes]()
    writer.settle(message, pending)
    loop.call_soon_threadsafe(pending.set_result, b"late")
    poll(lambda: broker.writes, timeout_s=TIMEOUT_S, what="the write")
    assert broker.writes == [(None, [("a", b"late")])] and broker.unreachable == 0
