"""A call made on an event loop leaves at once, as in Ray (issue 12): the downstream
replica starts it even while the calling coroutine goes on to block its loop, whether
it is the loop's first call (its send line still opening) or a later one. Each test runs
in local mode (private Redis on a Unix socket, one node) and in cluster mode (TCP Redis,
a separate worker), and repeats its race.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from actors import serve
from actors.handle import DeploymentHandle

ROUNDS = 5
#: How long the caller blocks its loop after calling; the downstream call must have
#: started well within it.
BLOCK_S = 0.3



@serve.deployment
class Clock:
    """Says when each call started (this machine's clock: every process here shares it)."""

    def __call__(self) -> float:
        return time.time()


async def call_and_block(clock: DeploymentHandle, calls: int, block_s: float) -> float:
    """Call ``clock`` ``calls`` times, block the loop, then say how long after the calls
    the last of them started."""
    responses = [clock.remote() for _ in range(calls)]
    called = time.time()
    time.sleep(block_s)  # blocks the loop: nothing else runs on it meanwhile
    return max([await r for r in responses]) - called


@serve.deployment
class Blocker:
    """Calls Clock, then blocks its own event loop before awaiting the answers."""

    def __init__(self, clock: DeploymentHandle) -> None:
        self.clock = clock

    async def __call__(self, calls: int, block_s: float) -> float:
        return await call_and_block(self.clock, calls, block_s)


@pytest.fixture(scope="module")
def blocker(mode: str) -> DeploymentHandle:
    return serve.run(Blocker.bind(Clock.bind()), name="sending", route_prefix="/sending")


@pytest.mark.parametrize("calls", [1, 2])
def test_calls_from_an_async_method_start_while_it_blocks_its_loop(blocker: DeploymentHandle, calls: int) -> None:
    for _ in range(ROUNDS):
        # When an async method calls a deployment (once, or twice in a row), then blocks
        # its loop
        late = blocker.remote(calls, BLOCK_S).result(timeout_s=30)
        # Then the calls were sent before the block ended, not after it
        assert late < BLOCK_S / 2, f"a call started {late:.3f} s after it was made"


def test_calls_from_a_driver_coroutine_start_while_it_blocks_its_loop(blocker: DeploymentHandle) -> None:
    clock = serve.get_deployment_handle("Clock", app_name="sending")

    async def rounds() -> list[float]:
        return [await call_and_block(clock, calls, BLOCK_S) for calls in (1, 1, 2)]

    for _ in range(ROUNDS):
        # Given a driver coroutine (a new event loop each round), when it calls and then
        # blocks its loop: first as the loop's first call, then once its line is open,
        # then twice in a row
        first, later, two = asyncio.run(rounds())
        assert first < BLOCK_S / 2, f"the loop's first call started {first:.3f} s after it was made"
        assert later < BLOCK_S / 2, f"a later call started {later:.3f} s after it was made"
        assert two < BLOCK_S / 2, f"one of two calls started {two:.3f} s after it was made"
