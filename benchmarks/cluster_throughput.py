"""Calls per second through a handle in cluster mode, for 1, 2 and 4 replicas spread over 2 workers.

Starts a private Redis (TCP, free port) and ``--workers`` ``mqserve worker`` processes;
this process is the driver (``serve.start(redis_url=...)``). For each replica count it
deploys throughput.py's ``AsyncNoop`` (same ``max_ongoing_requests``) as a fresh app,
checks where the controller placed the replicas, runs throughput.py's loop (one asyncio
caller keeping ``--inflight`` calls outstanding; ``--warmup`` s, then a ``--seconds``
window), and deletes the app. ``cpu_cores`` is the CPU each role used during the
window, in cores: ``client`` (this process), ``redis``, ``workers``, ``replicas``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from _cluster import BenchCluster
from _common import emit, latency_stats, log
from throughput import AsyncNoop, measure

from actors import serve


async def measure_with_cpu(handle, cluster: BenchCluster, args: argparse.Namespace):
    """throughput.measure, plus the cores each role used during the measured window."""
    task = asyncio.ensure_future(measure(handle, args.inflight, args.warmup, args.seconds))
    await asyncio.sleep(args.warmup)
    t0, cpu0 = time.perf_counter(), cluster.cpu_seconds()
    await asyncio.sleep(args.seconds)
    t1, cpu1 = time.perf_counter(), cluster.cpu_seconds()
    cores = {role: round((cpu1[role] - cpu0[role]) / (t1 - t0), 2) for role in cpu0}
    return (*await task, cores)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--replicas", default="1,2,4", help="comma-separated replica counts")
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0, help="measured window per replica count")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each window")
    p.add_argument("--max-ongoing", type=int, default=32, help="max_ongoing_requests per replica")
    args = p.parse_args()
    counts = [int(c) for c in args.replicas.split(",")]

    calls_per_s: dict[str, float] = {}
    p50: dict[str, float] = {}
    p99: dict[str, float] = {}
    placement: dict[str, dict[str, int]] = {}
    cpu_cores: dict[str, dict[str, float]] = {}
    with BenchCluster(workers=args.workers) as cluster:
        redis_kind = cluster.redis_kind
        for n in counts:
            name = f"tp{n}"
            app = AsyncNoop.options(num_replicas=n, max_ongoing_requests=args.max_ongoing).bind()
            handle = serve.run(app, name=name, route_prefix=None)
            placed = cluster.placement(name, "AsyncNoop")
            placement[str(n)] = {w.rsplit("-", 1)[-1]: k for w, k in placed.items()}
            if sum(placed.values()) != n or max(placed.values()) - min(placed.values()) > 1:
                raise SystemExit(f"{n} replicas were not spread evenly over the workers: {placed}")
            log.info("%d replica(s) placed %s; %d in flight for %.1f s (+%.1f s warm-up)",
                     n, placed, args.inflight, args.seconds, args.warmup)
            completed, latencies, window, cores = asyncio.run(measure_with_cpu(handle, cluster, args))
            cpu_cores[str(n)] = cores
            stats = latency_stats(latencies)
            calls_per_s[str(n)] = round(completed / window, 1)
            p50[str(n)], p99[str(n)] = stats["p50_ms"], stats["p99_ms"]
            log.info("%d replica(s): %.1f calls/s, p50 %.2f ms, cores used %s", n, completed / window,
                     stats["p50_ms"], cores)
            serve.delete(name)
            cluster.wait_idle()
    emit("cluster_throughput", workers=args.workers, in_flight=args.inflight, calls_per_s=calls_per_s,
         p50_ms=p50, p99_ms=p99, placement=placement, cpu_cores=cpu_cores, max_ongoing_requests=args.max_ongoing,
         seconds=args.seconds, warmup_s=args.warmup, redis=redis_kind, cores=os.cpu_count())


if __name__ == "__main__":
    main()
