"""A call made on an event loop leaves at once, as in Ray (issue 12): the downstream
replica starts it even while the calling coroutine goes on to block its loop. Each test
runs in local mode (private Redis on a Unix socket, one node) and in cluster mode (TCP
Redis, a separate worker), and repeats its race.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from actors import serve
from actors.handle import DeploymentHandle
from tests.cluster import serve_in

ROUNDS = 6
#: How long the caller blocks its loop after calling; the downstream call must have
#: started well within it.
BLOCK_S = 0.5


@pytest.fixture(scope="module", params=["local", "cluster"])
def mode(request, redis_url: str) -> Iterator[str]:
    with serve_in(request.param, redis_url, prefix="send") as mode:
        yield mode


@serve.deployment
class Clock:
    """Says when each call started (this machine's clock: every process here shares it)."""

    def __call__(self) -> float:
        return time.time()


@serve.deployment
class Blocker:
    """Calls Clock, then blocks its own event loop before awaiting the answer."""

    def __init__(self, clock: DeploymentHandle) -> None:
        self.clock = clock

    async def __call__(self, block_s: float) -> tuple[float, float]:
        await self.clock.remote()  # the loop's first call may go out with its next step
        response = self.clock.remote()
        called = time.time()
        time.sleep(block_s)  # blocks the replica's loop: nothing else runs on it meanwhile
        return called, await response


@pytest.fixture(scope="module")
def blocker(mode: str) -> DeploymentHandle:
    return serve.run(Blocker.bind(Clock.bind()), name="sending", route_prefix="/sending")


def test_a_call_from_an_async_method_starts_while_its_caller_blocks_its_loop(blocker: DeploymentHandle) -> None:
    for _ in range(ROUNDS):
        # When an async method calls a deployment, then blocks its loop
        called, started = blocker.remote(BLOCK_S).result(timeout_s=30)
        # Then the call was sent before the block, not after it
        assert started - called < BLOCK_S / 2, f"the call started {started - called:.3f} s after it was made"


def test_a_call_from_a_driver_coroutine_starts_while_it_blocks_its_loop(blocker: DeploymentHandle) -> None:
    clock = serve.get_deployment_handle("Clock", app_name="sending")

    async def round_trip() -> tuple[float, float]:
        await clock.remote()  # this loop's first call may go out with its next step
        response = clock.remote()
        called = time.time()
        time.sleep(BLOCK_S)  # blocks this loop
        return called, await response

    for _ in range(ROUNDS):
        # Given a driver coroutine (a new event loop each round), when it does the same
        called, started = asyncio.run(round_trip())
        assert started - called < BLOCK_S / 2, f"the call started {started - called:.3f} s after it was made"
