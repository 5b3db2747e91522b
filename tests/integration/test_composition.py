"""Responses passed to other calls, in every interleaving: passed again after they
completed, fanned out, read by their caller too, cancelled, timed out or failed
upstream. Each test runs in local mode (private Redis on a Unix socket, one node) and
in cluster mode (TCP Redis, a separate worker), and repeats its race 20 times.
"""

from __future__ import annotations

import asyncio
import gc
import os

import pytest

from actors import serve
from actors.exceptions import DeploymentUnavailableError, ReplicaDiedError, RequestCancelledError
from actors.handle import DeploymentHandle
from actors.runtime import sender
from actors.runtime.context import current_context
from tests.cluster import current_registry, dashboard_key, poll

ROUNDS = 20




@serve.deployment(max_ongoing_requests=1)
class Source:
    """Upstream calls: quick, slow, blocked behind its single slot, or dying."""

    def __call__(self, x: int) -> int:
        return x + 1

    async def nap(self, seconds: float, x: int = 0) -> int:
        await asyncio.sleep(seconds)
        return x

    def die(self) -> None:
        os._exit(1)


@serve.deployment(max_ongoing_requests=1)
class Sink:
    """Downstream calls; counts the calls that really ran."""

    def __init__(self) -> None:
        self.ran = 0

    def __call__(self, x: int, k: int = 0) -> int:
        self.ran += 1
        return x * 10 + k

    async def async_call(self, x: int) -> int:
        self.ran += 1
        return x * 10

    def count(self) -> int:
        return self.ran


@serve.deployment
class Orchestrator:
    """The same compositions made from inside a replica (async code)."""

    def __init__(self, source: DeploymentHandle, sink: DeploymentHandle) -> None:
        self.source, self.sink = source, sink

    async def again_after_completion(self, x: int) -> list[int]:
        r = self.source.remote(x)
        first = await self.sink.remote(r, k=1)
        second = await self.sink.remote(r, k=2)
        own = await r
        third = await self.sink.remote(r, k=3)
        return [first, second, own, third]

    async def fan_out(self, x: int) -> list[int]:
        r = self.source.remote(x)
        return list(await asyncio.gather(self.sink.remote(r, k=1), self.sink.remote(r, k=2), r))

    async def cancel_then_pass(self) -> str:
        self.source.nap.remote(1)  # holds Source's only slot
        r = self.source.nap.remote(30)
        downstream = self.sink.remote(r)
        r.cancel()
        try:
            await downstream
        except RequestCancelledError:
            return "cancelled"
        return "not cancelled"


@pytest.fixture(scope="module")
def handles(mode: str) -> tuple[DeploymentHandle, DeploymentHandle, DeploymentHandle]:
    source, sink = Source.bind(), Sink.bind()
    orchestrator = serve.run(Orchestrator.bind(source, sink), name="comp", route_prefix="/comp")
    return (serve.get_deployment_handle("Source", "comp"), serve.get_deployment_handle("Sink", "comp"),
            orchestrator)


def test_a_response_passed_again_after_it_completed_passes_its_value(handles) -> None:
    source, sink, orchestrator = handles
    for i in range(ROUNDS):
        r = source.remote(i)
        assert sink.remote(r, k=1).result(timeout_s=30) == (i + 1) * 10 + 1
        assert sink.remote(r, k=2).result(timeout_s=30) == (i + 1) * 10 + 2  # r completed long ago
        assert r.result(timeout_s=30) == i + 1
        assert sink.remote(r, k=3).result(timeout_s=30) == (i + 1) * 10 + 3  # after the caller read it
        assert r.result(timeout_s=30) == i + 1
        assert orchestrator.again_after_completion.remote(i).result(timeout_s=30) == [
            (i + 1) * 10 + 1, (i + 1) * 10 + 2, i + 1, (i + 1) * 10 + 3]


def test_a_fan_out_passes_the_value_to_every_consumer_whenever_it_completes(handles) -> None:
    source, sink, orchestrator = handles
    for i in range(ROUNDS):
        r = source.remote(i)
        first = sink.remote(r, k=1)
        second = sink.remote(r, k=2)  # r may complete between the two calls
        assert [first.result(timeout_s=30), second.result(timeout_s=30), r.result(timeout_s=30)] == [
            (i + 1) * 10 + 1, (i + 1) * 10 + 2, i + 1]
        assert orchestrator.fan_out.remote(i).result(timeout_s=30) == [(i + 1) * 10 + 1, (i + 1) * 10 + 2, i + 1]


def test_a_cancelled_or_timed_out_upstream_fails_its_downstream_at_once(handles) -> None:
    source, sink, orchestrator = handles
    for _ in range(ROUNDS // 4):
        blocker = source.nap.remote(1.0)  # Source's only slot: what follows stays queued
        # Cancelled before it was passed on, and after.
        before = source.nap.remote(30)
        before.cancel()
        with pytest.raises(RequestCancelledError):
            sink.remote(before).result(timeout_s=10)
        after = source.nap.remote(30)
        downstream = sink.remote(after)
        after.cancel()
        with pytest.raises(RequestCancelledError):
            downstream.result(timeout_s=10)
        # Withdrawn by a timeout, before it was passed on, and after.
        late = source.nap.remote(30)
        downstream = sink.remote(late)
        with pytest.raises(TimeoutError):
            late.result(timeout_s=0.05)
        with pytest.raises(RequestCancelledError):
            downstream.result(timeout_s=10)
        with pytest.raises(RequestCancelledError):
            sink.remote(late).result(timeout_s=10)
        assert blocker.result(timeout_s=30) == 0
        # An upstream running (async) when cancelled.
        running = source.nap.remote(30)
        downstream = sink.remote(running)
        queue = current_registry().keys.queue("comp", "Source")
        poll(lambda: current_registry().redis.llen(queue) == 0, what="nap taken")  # noqa: B023 - polled at once
        running.cancel()
        with pytest.raises(RequestCancelledError):
            downstream.result(timeout_s=10)
        assert orchestrator.cancel_then_pass.remote().result(timeout_s=30) == "cancelled"
    # No downstream slot stayed blocked: Sink (one slot) answers at once.
    assert sink.remote(1).result(timeout_s=5) == 10


def test_an_upstream_that_cannot_run_fails_its_downstream(handles) -> None:
    source, sink, _ = handles
    # Refused at once: its app does not exist.
    ctx = current_context()
    assert ctx is not None
    missing = ctx.handle("Nobody", "nowhere").remote(1)
    with pytest.raises(DeploymentUnavailableError):
        sink.remote(missing).result(timeout_s=10)
    # Its replica dies while running it.
    dying = source.die.remote()
    with pytest.raises(ReplicaDiedError):
        sink.remote(dying).result(timeout_s=30)
    # Its app is deleted while it waits in the queue.
    gone = serve.run(Source.bind(), name="gone", route_prefix="/gone")
    gone.nap.remote(2.0)  # its only slot: the next one waits in the queue
    waiting = gone.remote(1)
    downstream = sink.remote(waiting)
    serve.delete("gone")
    with pytest.raises(DeploymentUnavailableError):
        downstream.result(timeout_s=10)
    assert sink.remote(2).result(timeout_s=10) == 20


def test_a_cancel_during_take_up_is_not_lost(handles) -> None:
    """Cancelled after a replica took the request, before it started (the replica waits
    for the request's argument): the method never runs, sync or async."""
    source, sink, _ = handles
    reg = current_registry()
    queue = reg.keys.queue("comp", "Sink")
    ran_before = sink.count.remote().result(timeout_s=30)
    for i in range(ROUNDS):
        upstream = source.nap.remote(0.3, i)
        target = sink.remote(upstream) if i % 2 else sink.async_call.remote(upstream)
        poll(lambda: reg.redis.llen(queue) == 0, what="the request taken by Sink")
        target.cancel()
        with pytest.raises(RequestCancelledError):
            target.result(timeout_s=10)
        assert upstream.result(timeout_s=30) == i
    # Sink has one slot, so this runs after every cancelled request was done with.
    assert sink.count.remote().result(timeout_s=30) == ran_before


def test_a_cancel_that_overtakes_its_request_keeps_it_from_running(handles, monkeypatch) -> None:
    """From an event loop, the calls of a step after its first are sent when the step ends,
    but a cancel goes out at once, on another connection: the request must not run when
    it arrives later."""
    source, sink, _ = handles
    reg = current_registry()
    ran_before = sink.count.remote().result(timeout_s=30)
    monkeypatch.setattr(sender.OVERRUN, "budget_s", 3600.0)  # no thread sends them meanwhile

    async def cancel_at_once() -> int:
        for i in range(ROUNDS):
            first = source.remote(i)  # the step's first call: sent at once
            response = sink.remote(i)  # held until the step ends
            response.cancel()
            # Hold the loop (so the request is not sent) until the cancel is in Redis.
            flag = reg.keys.cancelled(response.request_id)
            poll(lambda flag=flag: reg.redis.exists(flag), timeout_s=10,
                 interval_s=0.001, what="the cancel flag")
            await asyncio.sleep(0)  # the loop's step ends: the request goes out
            with pytest.raises(RequestCancelledError):
                await response
            assert await first == i + 1
        # Sent after them on the same connection, and Sink has one slot: it runs last.
        return await sink.count.remote()

    assert asyncio.run(cancel_at_once()) == ran_before


def test_results_of_chained_calls_go_once_read(handles, mode: str) -> None:
    """With the default result TTL (300 s), chained calls of every shape leave no key
    behind once their responses are read or dropped; nor does the caller keep any
    bookkeeping per call."""
    source, sink, orchestrator = handles
    reg = current_registry()

    def keys() -> set[bytes]:
        """Keys of the namespace but the alive keys of listeners (one per process or loop)."""
        return {k for k in reg.redis.scan_iter(match=reg.keys.pattern(), count=1000)
                if not k.endswith(b":alive") and not dashboard_key(k)}

    idle = keys()

    for i in range(ROUNDS):
        r = source.remote(i)
        assert sink.remote(r).result(timeout_s=30) == (i + 1) * 10  # consumed, never read by the caller
        r2 = source.remote(i)
        fan = [sink.remote(r2, k=k) for k in range(3)]
        assert [f.result(timeout_s=30) for f in fan] == [(i + 1) * 10 + k for k in range(3)]
        assert r2.result(timeout_s=30) == i + 1  # read by the caller too
        assert sink.remote(r2, k=9).result(timeout_s=30) == (i + 1) * 10 + 9  # then inline
        sink.remote(source.remote(i)).result(timeout_s=30)  # the upstream response dropped at once
        assert orchestrator.again_after_completion.remote(i).result(timeout_s=30)[2] == i + 1
        orchestrator.fan_out.remote(i).result(timeout_s=30)
    del r, r2, fan
    gc.collect()  # responses that failed sit in reference cycles (exception, traceback, frame)
    try:
        poll(lambda: not (keys() - idle), timeout_s=30, what="keys back to idle")
    except AssertionError:
        raise AssertionError(f"keys left: {sorted(keys() - idle)[:12]}") from None
    client = sink._client
    assert client is not None
    try:
        poll(lambda: not client._pending, timeout_s=10,
             what="caller bookkeeping to empty")
    except AssertionError:
        raise AssertionError(f"left: {client._pending._records}") from None


# Cancelling a request cancels the calls it made, recursively ---------------------------------
@serve.deployment(max_ongoing_requests=100)
class Leafmost:
    async def hold(self, marks: str, i: int) -> None:
        await _held(marks, f"leaf-{i}")


@serve.deployment(max_ongoing_requests=100)
class Middle:
    def __init__(self, leaf: DeploymentHandle) -> None:
        self.leaf = leaf

    async def hold(self, marks: str, i: int) -> None:
        self.pending = self.leaf.hold.remote(marks, i)  # made, never awaited
        await _held(marks, f"middle-{i}")


@serve.deployment(max_ongoing_requests=100)
class Top:
    def __init__(self, middle: DeploymentHandle) -> None:
        self.middle = middle

    def blocking(self, marks: str, i: int) -> str:
        """Sync code cannot be interrupted; the call it waits on is cancelled under it."""
        try:
            self.middle.hold.remote(marks, i).result(timeout_s=60)
        except RequestCancelledError:
            return "its call was cancelled"
        return "its call finished"

    async def fire_and_wait(self, marks: str, i: int) -> None:
        self.pending = self.middle.hold.remote(marks, i)  # made, never awaited
        await asyncio.sleep(60)


async def _held(marks: str, name: str) -> None:
    """Mark that it runs, then wait to be cancelled, and mark that too."""
    open(os.path.join(marks, f"{name}.started"), "w").close()
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        open(os.path.join(marks, f"{name}.cancelled"), "w").close()
        raise


def test_cancelling_a_request_cancels_the_calls_it_made_recursively(mode: str, tmp_path) -> None:
    top = serve.run(Top.bind(Middle.bind(Leafmost.bind())), name="tree", route_prefix=None)
    marks = str(tmp_path)
    mark = lambda name: os.path.exists(os.path.join(marks, name))  # noqa: E731
    for i in range(ROUNDS):
        method = "fire_and_wait" if i % 2 else "blocking"
        response = getattr(top, method).remote(marks, i)
        poll(lambda: mark(f"leaf-{i}.started") and mark(f"middle-{i}.started"),  # noqa: B023
             timeout_s=30, interval_s=0.01, what="the whole tree to run")
        response.cancel()
        poll(lambda: mark(f"middle-{i}.cancelled") and mark(f"leaf-{i}.cancelled"),  # noqa: B023
             timeout_s=30, interval_s=0.01, what="the calls made by the cancelled request to be cancelled")
        with pytest.raises(RequestCancelledError):
            response.result(timeout_s=30)
    serve.delete("tree")
