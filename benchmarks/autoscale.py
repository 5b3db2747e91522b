"""Seconds from a step of load to the replicas the autoscaler adds for it, in cluster mode.

Starts a private Redis (TCP, free port) and ``--workers`` ``mqserve worker`` processes;
this process is the driver. It deploys an ``async def __call__`` that sleeps 0.1 s, with
``max_ongoing_requests=2`` and ``autoscaling_config`` ``{"min_replicas": 1,
"max_replicas": 4, "target_ongoing_requests": 2, "upscale_delay_s": 0,
"downscale_delay_s": 600}``, and ``serve.run`` returns once its one replica runs.

1. Before: ``--before-inflight`` (2) callers, as much as one replica serves without
   asking for another (2 ongoing / target 2 = 1 replica), for ``--before`` seconds.
2. Step: 6 more callers start at once, so ``--inflight`` (8) calls stay in flight
   (queued + ongoing = 8, / target 2 = 4 replicas). A thread polls the registry every
   20 ms and notes when the controller's target becomes 4 and when 2, 3 and 4 replicas
   are RUNNING.
3. After: once 4 run, ``--settle`` seconds, then calls/s over an ``--after`` window.

Reports seconds from the step to each replica count, calls/s before, during (step to 4
RUNNING) and after, completions per 0.5 s from the step, and the final placement.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time

from _cluster import BenchCluster
from _common import emit, log

from actors import serve

APP, DEP = "auto", "Sleeper"
AUTOSCALING = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2,
               "upscale_delay_s": 0, "downscale_delay_s": 600}


@serve.deployment(max_ongoing_requests=2, autoscaling_config=AUTOSCALING)
class Sleeper:
    async def __call__(self, x=None):
        await asyncio.sleep(0.1)
        return x


class Watcher(threading.Thread):
    """Notes (perf_counter) when the target becomes 4 and when each RUNNING count is first seen."""

    def __init__(self, cluster: BenchCluster, interval_s: float = 0.02) -> None:
        super().__init__(daemon=True, name="watcher")
        self.cluster, self.interval_s = cluster, interval_s
        self.first_running: dict[int, float] = {}
        self.target_at: dict[int, float] = {}
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        registry = self.cluster.registry
        assert registry is not None
        try:
            while not self.done.is_set():
                now = time.perf_counter()
                n = self.cluster.running(APP, DEP)
                for k in range(1, n + 1):
                    self.first_running.setdefault(k, now)
                state = registry.scale_states().get((APP, DEP))
                if state is not None:
                    self.target_at.setdefault(int(state["target"]), now)
                time.sleep(self.interval_s)
        except BaseException as e:  # reported by the main thread
            self.error = e


async def drive(handle, cluster: BenchCluster, args: argparse.Namespace) -> dict:
    completions: list[float] = []
    stop = False

    async def caller() -> None:
        while not stop:
            await handle.remote(None)
            completions.append(time.perf_counter())

    tasks = [asyncio.create_task(caller()) for _ in range(args.before_inflight)]
    t_begin = time.perf_counter()
    await asyncio.sleep(args.before)
    if cluster.running(APP, DEP) != 1:
        raise SystemExit(f"{args.before_inflight} in flight already scaled the deployment: "
                         f"{cluster.running(APP, DEP)} replicas")
    watcher = Watcher(cluster)
    watcher.start()
    t_step = time.perf_counter()
    tasks += [asyncio.create_task(caller()) for _ in range(args.inflight - args.before_inflight)]
    log.info("load step: %d -> %d in flight", args.before_inflight, args.inflight)
    deadline = t_step + args.timeout
    while 4 not in watcher.first_running and time.perf_counter() < deadline and watcher.error is None:
        await asyncio.sleep(0.02)
    if watcher.error is not None:
        raise watcher.error
    t_four = watcher.first_running.get(4)
    if t_four is None:
        log.warning("4 replicas did not run within %.0f s", args.timeout)
    await asyncio.sleep(args.settle)
    t_after = time.perf_counter()
    await asyncio.sleep(args.after)
    t_end = time.perf_counter()
    stop = True
    await asyncio.gather(*tasks)
    watcher.done.set()
    watcher.join()

    def rate(lo: float, hi: float) -> float | None:
        if hi <= lo:
            return None
        return round(sum(1 for c in completions if lo <= c < hi) / (hi - lo), 1)

    # Skip the first 0.5 s of "before": the callers' first round trip.
    before = rate(t_begin + 0.5, t_step)
    during = rate(t_step, t_four) if t_four is not None else None
    after = rate(t_after, t_end)
    buckets = []
    edge = t_step
    while edge < t_end - 1e-9:
        buckets.append(sum(1 for c in completions if edge <= c < edge + 0.5))
        edge += 0.5
    since = {k: round(t - t_step, 3) for k, t in watcher.first_running.items() if t >= t_step}
    return {
        "seconds_to_replicas": {str(k): since.get(k) for k in (2, 3, 4)},
        "seconds_to_target_4": round(watcher.target_at[4] - t_step, 3) if 4 in watcher.target_at else None,
        "calls_per_s_before": before, "calls_per_s_during_scale_up": during, "calls_per_s_after": after,
        "completions_per_0.5s_from_step": buckets,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--before-inflight", type=int, default=2)
    p.add_argument("--inflight", type=int, default=8)
    p.add_argument("--before", type=float, default=3.0, help="seconds of load before the step")
    p.add_argument("--after", type=float, default=3.0, help="measured window once 4 replicas run")
    p.add_argument("--settle", type=float, default=0.5, help="seconds between 4 RUNNING and the after window")
    p.add_argument("--timeout", type=float, default=60.0, help="give up waiting for 4 replicas after this")
    args = p.parse_args()

    with BenchCluster(workers=args.workers) as cluster:
        redis_kind = cluster.redis_kind
        handle = serve.run(Sleeper.bind(), name=APP, route_prefix=None)
        log.info("1 replica runs: %s", cluster.placement(APP, DEP))
        result = asyncio.run(drive(handle, cluster, args))
        placement = cluster.placement(APP, DEP)
    emit("autoscale", workers=args.workers, **result, placement={w.rsplit("-", 1)[-1]: n for w, n in placement.items()},
         in_flight_before=args.before_inflight, in_flight=args.inflight, call_s=0.1, max_ongoing_requests=2,
         autoscaling_config=AUTOSCALING, redis=redis_kind, cores=os.cpu_count())


if __name__ == "__main__":
    main()
