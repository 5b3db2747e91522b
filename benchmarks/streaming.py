"""Streamed handle calls: items per second to one consumer, and time to the first item.

One deployment whose sync generator yields ``--items`` small ints per call, called
through ``handle.options(stream=True)``. (a) ``--calls`` sequential calls read to the
end, first with a sync ``for``, then with ``async for`` in an asyncio loop; items/s is
all items over the wall time of all calls (each call's start included). (b)
``--ttfi-calls`` sequential calls that take the first item and then ``cancel()`` the
generator: p50/p99 of the time from ``.remote()`` to that first item, sync and async.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from _common import emit, free_port, latency_stats, log

from actors import serve


@serve.deployment
class Counter:
    def __call__(self, n: int):
        for i in range(n):
            yield i


def check(items: int, total: int, n: int) -> None:
    if items != n or total != n * (n - 1) // 2:
        raise RuntimeError(f"a call streamed {items} items summing to {total}; expected {n} items 0..{n - 1}")


def read_sync(handle: Any, calls: int, n: int) -> float:
    """Seconds to read ``calls`` whole streams one after the other."""
    start = time.perf_counter()
    for _ in range(calls):
        items = total = 0
        for item in handle.remote(n):
            items += 1
            total += item
        check(items, total, n)
    return time.perf_counter() - start


async def read_async(handle: Any, calls: int, n: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        items = total = 0
        async for item in handle.remote(n):
            items += 1
            total += item
        check(items, total, n)
    return time.perf_counter() - start


def first_items_sync(handle: Any, calls: int, n: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        gen = handle.remote(n)
        first = next(gen)
        out.append(time.perf_counter() - t0)
        gen.cancel()
        if first != 0:
            raise RuntimeError(f"first item was {first!r}, expected 0")
    return out


async def first_items_async(handle: Any, calls: int, n: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        gen = handle.remote(n)
        first = await gen.__anext__()
        out.append(time.perf_counter() - t0)
        gen.cancel()
        if first != 0:
            raise RuntimeError(f"first item was {first!r}, expected 0")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=50, help="calls read to the end, per mode")
    p.add_argument("--items", type=int, default=1000, help="items each call yields")
    p.add_argument("--ttfi-calls", type=int, default=200, help="calls for the time-to-first-item figures")
    p.add_argument("--warmup", type=int, default=5, help="unmeasured calls before each measurement")
    p.add_argument("--max-ongoing", type=int, default=8, help="max_ongoing_requests of the replica")
    args = p.parse_args()

    # serve.run always starts the HTTP gateway: keep it off port 8000.
    os.environ["MQSERVE_HTTP_PORT"] = str(free_port())
    app = Counter.options(max_ongoing_requests=args.max_ongoing).bind()
    n = args.items
    try:
        handle = serve.run(app, name="streaming", route_prefix=None).options(stream=True)
        log.info("sync: %d calls of %d items (+%d warm-up)", args.calls, n, args.warmup)
        read_sync(handle, args.warmup, n)
        sync_s = read_sync(handle, args.calls, n)

        log.info("async: %d calls of %d items (+%d warm-up)", args.calls, n, args.warmup)

        async def async_run() -> float:
            await read_async(handle, args.warmup, n)
            return await read_async(handle, args.calls, n)

        async_s = asyncio.run(async_run())

        log.info("time to first item: %d calls, sync then async (+%d warm-up each)", args.ttfi_calls, args.warmup)
        first_items_sync(handle, args.warmup, n)
        ttfi_sync = first_items_sync(handle, args.ttfi_calls, n)

        async def async_ttfi() -> list[float]:
            await first_items_async(handle, args.warmup, n)
            return await first_items_async(handle, args.ttfi_calls, n)

        ttfi_async = asyncio.run(async_ttfi())
    finally:
        serve.shutdown()
    total_items = args.calls * n
    s = latency_stats(ttfi_sync)
    a = latency_stats(ttfi_async)
    emit("streaming", items_per_s_sync=round(total_items / sync_s, 1),
         items_per_s_async=round(total_items / async_s, 1),
         ttfi_p50_ms=s["p50_ms"], ttfi_p99_ms=s["p99_ms"],
         ttfi_async_p50_ms=a["p50_ms"], ttfi_async_p99_ms=a["p99_ms"],
         calls=args.calls, items_per_call=n, ttfi_calls=args.ttfi_calls, warmup_calls=args.warmup,
         max_ongoing_requests=args.max_ongoing)


if __name__ == "__main__":
    main()
