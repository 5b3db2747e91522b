"""After load of every kind ends, Redis holds what it held at rest: results, streams,
inboxes, flags and queues are deleted once consumed or expire."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from actors import serve
from actors.exceptions import RequestCancelledError
from tests.cluster import cluster_on, poll, settle_keys


@serve.deployment(max_ongoing_requests=4)
class Mixed:
    def echo(self, x):
        return x

    async def gen(self, n: int):
        for i in range(n):
            yield i

    async def nap(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    def block(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    async def __call__(self, request) -> str:
        return "ok"


def test_key_count_returns_to_idle_after_every_kind_of_call(redis_url: str) -> None:
    with cluster_on(redis_url, gateway=True, prefix="leak", MQSERVE_RESULT_TTL_S="3") as (cluster, port):
        handle = serve.run(Mixed.bind(), name="mixed", route_prefix="/mixed")
        # Warm up every path once, so the long-lived keys (alive keys of each listener)
        # exist in the idle picture.
        assert handle.echo.remote(1).result(timeout_s=30) == 1
        assert list(handle.options(stream=True).gen.remote(2)) == [0, 1]
        assert httpx.get(f"http://127.0.0.1:{port}/mixed", timeout=30).text == "ok"
        idle = cluster.namespace_keys()

        # Unary, chained and HTTP calls.
        assert [r.result(timeout_s=30) for r in [handle.echo.remote(i) for i in range(200)]] == list(range(200))
        chained = [handle.echo.remote(handle.echo.remote(i)) for i in range(50)]
        assert [r.result(timeout_s=30) for r in chained] == list(range(50))
        for _ in range(20):
            assert httpx.get(f"http://127.0.0.1:{port}/mixed", timeout=30).text == "ok"
        # Streams read to the end, and streams left early.
        for _ in range(20):
            assert list(handle.options(stream=True).gen.remote(50)) == list(range(50))
        for _ in range(10):
            stream = handle.options(stream=True).gen.remote(10_000)
            assert next(iter(stream)) == 0
            stream.cancel()
        # Cancelled calls: running ones (async) and queued ones behind busy slots.
        running = [handle.nap.remote(30) for _ in range(4)]
        queued = [handle.nap.remote(30) for _ in range(20)]
        for r in queued + running:
            r.cancel()
        for r in queued + running:
            with pytest.raises(RequestCancelledError):
                r.result(timeout_s=30)
        # Timed-out calls: running ones finish later; queued ones are withdrawn.
        slow = [handle.block.remote(0.5) for _ in range(8)]
        for r in slow:
            with pytest.raises(TimeoutError):
                r.result(timeout_s=0.05)

        settle_keys(cluster, idle)
        # Nor does the caller keep anything per call once its calls are over.
        client = chained[0]._client
        poll(lambda: not client._pending, what="caller bookkeeping to empty")
