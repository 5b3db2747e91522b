"""@serve.batch throughput: a batch costs a fixed 5 ms whatever its size."""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import emit, latency_stats, log

from actors import serve


@serve.deployment
class FixedCost:
    def __init__(self) -> None:
        self.sizes: list[int] = []

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def run(self, items: list[int]) -> list[int]:
        self.sizes.append(len(items))
        await asyncio.sleep(0.005)  # the fixed cost of one batch
        return items

    async def __call__(self, x: int) -> int:
        return await self.run(x)

    def mean_batch_size(self, skip: int) -> float:
        sizes = self.sizes[skip:]
        return sum(sizes) / len(sizes) if sizes else 0.0

    def batches(self) -> int:
        return len(self.sizes)


async def measure(handle, inflight: int, warmup_s: float, seconds: float) -> tuple[int, list[float]]:
    start = time.perf_counter()
    measure_from, deadline = start + warmup_s, start + warmup_s + seconds
    latencies: list[float] = []
    completed = 0

    async def worker() -> None:
        nonlocal completed
        while (t0 := time.perf_counter()) < deadline:
            await handle.remote(1)
            t1 = time.perf_counter()
            if measure_from <= t1 <= deadline:
                completed += 1
                if t0 >= measure_from:
                    latencies.append(t1 - t0)

    await asyncio.gather(*(worker() for _ in range(inflight)))
    return completed, latencies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--inflight", type=int, default=256)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    args = p.parse_args()
    handle = serve.run(FixedCost.bind(), name="batching", route_prefix=None)
    try:
        before = handle.batches.remote().result()
        log.info("%d in flight for %.1f s", args.inflight, args.seconds)
        completed, latencies = asyncio.run(measure(handle, args.inflight, args.warmup, args.seconds))
        mean_size = handle.mean_batch_size.remote(before).result()
    finally:
        serve.shutdown()
    stats = latency_stats(latencies)
    emit("batching", calls_per_s=round(completed / args.seconds, 1), mean_batch_size=round(mean_size, 1),
         p50_ms=stats["p50_ms"], p99_ms=stats["p99_ms"], inflight=args.inflight, max_batch_size=32,
         batch_cost_ms=5, seconds=args.seconds)


if __name__ == "__main__":
    main()
