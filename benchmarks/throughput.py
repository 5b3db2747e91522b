"""Calls per second with a fixed number of calls in flight from one asyncio caller."""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import emit, latency_stats, log

from actors import serve


@serve.deployment
class AsyncNoop:
    async def __call__(self, x=None):
        return x


async def measure(handle, inflight: int, warmup_s: float, seconds: float) -> tuple[int, list[float], float]:
    start = time.perf_counter()
    measure_from = start + warmup_s
    deadline = measure_from + seconds
    latencies: list[float] = []
    completed = 0

    async def worker() -> None:
        nonlocal completed
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline:
                return
            await handle.remote(None)
            t1 = time.perf_counter()
            if t0 >= measure_from and t1 <= deadline:
                latencies.append(t1 - t0)
            if measure_from <= t1 <= deadline:
                completed += 1

    await asyncio.gather(*(worker() for _ in range(inflight)))
    return completed, latencies, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0, help="measured window")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before the window")
    p.add_argument("--max-ongoing", type=int, default=32, help="max_ongoing_requests per replica")
    args = p.parse_args()

    app = AsyncNoop.options(num_replicas=args.replicas, max_ongoing_requests=args.max_ongoing).bind()
    handle = serve.run(app)
    try:
        log.info("%d in flight for %.1f s (+%.1f s warm-up)", args.inflight, args.seconds, args.warmup)
        completed, latencies, window = asyncio.run(measure(handle, args.inflight, args.warmup, args.seconds))
    finally:
        serve.shutdown()
    stats = latency_stats(latencies)
    emit("throughput", calls_per_s=round(completed / window, 1), calls=completed,
         p50_ms=stats["p50_ms"], p99_ms=stats["p99_ms"], replicas=args.replicas,
         inflight=args.inflight, max_ongoing_requests=args.max_ongoing,
         seconds=args.seconds, warmup_s=args.warmup)


if __name__ == "__main__":
    main()
