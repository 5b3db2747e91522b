"""Deadlines that travel (issue 14, part 2): ``handle.options(timeout_s=)`` and the
gateway's request timeout give a request an absolute deadline in Redis's time, which
the calls it makes inherit. A request never starts past its deadline, a running
coroutine is cancelled at it, and the caller gets ``DeadlineExceededError`` (a
``TimeoutError``) near it. Local mode and cluster mode; HTTP in ``test_deadlines_http``."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from actors import serve
from actors.exceptions import DeadlineExceededError
from actors.handle import DeploymentHandle
from broker import counts
from broker.registry import Registry
from tests.cluster import current_registry, dashboard_key, poll


@serve.deployment(max_ongoing_requests=1)
class Blocked:
    """The end of the chain: one slot, which ``hold`` keeps busy; counts what really ran."""

    def __init__(self) -> None:
        self.ran: list[int] = []

    async def hold(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "held"

    async def __call__(self, x: int) -> int:
        self.ran.append(x)
        return x

    async def sleepy(self, seconds: float) -> str:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.ran.append(-1)  # cancelled: recorded
            raise
        return "slept"

    def log(self) -> list[int]:
        return self.ran


@serve.deployment
class Middle:
    def __init__(self, down: DeploymentHandle) -> None:
        self.down = down

    async def __call__(self, x: int) -> int:
        return await self.down.remote(x)

    async def tighter(self, x: int) -> int:
        # A smaller budget of its own wins over the inherited one
        return await self.down.options(timeout_s=0.5).remote(x)


@serve.deployment
class Ingress:
    def __init__(self, mid: DeploymentHandle) -> None:
        self.mid = mid

    async def __call__(self, x: int) -> int:
        return await self.mid.remote(x)

    async def tighter(self, x: int) -> int:
        return await self.mid.tighter.remote(x)


@pytest.fixture(scope="module")
def chain(mode: str) -> tuple[DeploymentHandle, DeploymentHandle]:
    blocked = Blocked.bind()
    ingress = serve.run(Ingress.bind(Middle.bind(blocked)), name="deadlines", route_prefix="/deadlines")
    return ingress, serve.get_deployment_handle("Blocked", "deadlines")


def _keys(reg: Registry) -> set[bytes]:
    """The namespace's keys but listeners' alive keys and the counters."""
    return {k for k in reg.redis.scan_iter(match=reg.keys.pattern(), count=1000)
            if not k.endswith(b":alive") and b":counts:" not in k and not dashboard_key(k)}


def _expired(reg: Registry) -> int:
    return counts.read(reg.redis, reg.keys, [("deadlines", "Blocked")])[0].get(counts.EXPIRED, 0)


def test_a_deadline_travels_down_a_chain_and_the_blocked_call_never_runs(chain, mode: str) -> None:
    ingress, blocked = chain
    reg = current_registry()
    assert blocked.remote(0).result(timeout_s=30) == 0  # warm: every replica serves
    idle = _keys(reg)
    hold = blocked.hold.remote(5)  # the only slot of the chain's end, for 5 s
    start = time.monotonic()
    with pytest.raises(TimeoutError) as timed_out:
        ingress.options(timeout_s=2).remote(1).result()
    elapsed = time.monotonic() - start
    assert isinstance(timed_out.value, DeadlineExceededError)
    assert 1.8 < elapsed < 3.5, elapsed
    assert hold.result(timeout_s=30) == "held"
    # FIFO, one slot: once a later call ran, the chain's call would have run before it
    assert blocked.remote(2).result(timeout_s=30) == 2
    assert blocked.log.remote().result(timeout_s=30) == [0, 2]
    del hold
    gc.collect()
    poll(lambda: not (_keys(reg) - idle), timeout_s=30, what="keys back to idle")


def test_a_request_is_never_started_past_its_deadline(chain, mode: str) -> None:
    """Here nobody cancels the queued call (no caller waits): the replica that takes it
    after its deadline drops it, and counts it."""
    _, blocked = chain
    reg = current_registry()
    before = _expired(reg)
    hold = blocked.hold.remote(1.5)
    late = blocked.options(timeout_s=0.5).remote(3)  # queued behind the hold; never awaited in time
    assert hold.result(timeout_s=30) == "held"
    poll(lambda: _expired(reg) == before + 1, timeout_s=10, what="the expired call to be counted")
    with pytest.raises(DeadlineExceededError, match="before it started|while its caller waited"):
        late.result()
    assert 3 not in blocked.log.remote().result(timeout_s=30)


def test_a_running_coroutine_is_cancelled_at_its_deadline(chain, mode: str) -> None:
    _, blocked = chain
    reg = current_registry()
    before = _expired(reg)
    response = blocked.options(timeout_s=0.5).sleepy.remote(30)
    with pytest.raises(DeadlineExceededError):
        response.result()
    poll(lambda: -1 in blocked.log.remote().result(timeout_s=30), timeout_s=10, what="the method to be cancelled")
    assert _expired(reg) >= before  # cancelled by the caller or by the replica's own timer: both end it
    assert blocked.remote(4).result(timeout_s=30) == 4  # its slot is free


def test_a_smaller_budget_of_its_own_wins(chain, mode: str) -> None:
    ingress, blocked = chain
    hold = blocked.hold.remote(2)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        ingress.options(timeout_s=10).tighter.remote(5).result()
    assert time.monotonic() - start < 1.8  # the downstream's 0.5 s, not the 10 s
    assert hold.result(timeout_s=30) == "held"


def test_deadlines_race_twenty_times(chain, mode: str) -> None:
    """Deadlines just before, at and after the call's end: every call either returns
    its value or raises DeadlineExceededError, and none hangs."""
    ingress, _ = chain
    outcomes = {"ok": 0, "expired": 0}
    for i in range(20):
        try:
            assert ingress.options(timeout_s=0.002 * (i + 1)).remote(i).result(timeout_s=30) == i
            outcomes["ok"] += 1
        except DeadlineExceededError:
            outcomes["expired"] += 1
    assert sum(outcomes.values()) == 20
