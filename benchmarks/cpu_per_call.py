"""Where one call's CPU goes: microseconds of CPU per call in each process, and the Redis
commands per call, under a steady load.

The W3 workload of the side-by-side harness (a no-op deployment, 2 replicas,
``max_ongoing_requests=100``, 64 calls in flight from one asyncio caller), or the W2 one
(``--inflight 1``, sequential), with a sync or an async ``__call__``. Over the measured
window it reads each process's CPU time (``/proc/{pid}/stat``: user + system) — the
caller, every replica, the node, the gateway and Redis — and Redis's ``INFO
commandstats`` (reset at the window's start), and divides by the calls made. Linux only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from _common import emit, log

from actors import serve
from actors.runtime.context import current_context

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * TICK_S


def processes() -> dict[int, str]:
    """This process and its descendants, each named by what it runs."""
    names = {os.getpid(): "caller"}
    frontier = [os.getpid()]
    while frontier:
        parent = frontier.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as f:
                children = [int(p) for p in f.read().split()]
        except OSError:
            continue
        for pid in children:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "actors.runtime.replica" in cmd:
                names[pid] = f"replica-{sum(n.startswith('replica') for n in names.values()) + 1}"
            elif "actors.runtime.node" in cmd:
                names[pid] = "node"
            elif "-m gateway" in cmd:
                names[pid] = "gateway"
            elif "redis-server" in cmd:
                names[pid] = "redis"
            else:
                names[pid] = cmd.split(" ")[0].rsplit("/", 1)[-1]
            frontier.append(pid)
    return names


@serve.deployment(num_replicas=2, max_ongoing_requests=100)
class SyncNoop:
    def __call__(self, x: Any) -> Any:
        return x


@serve.deployment(num_replicas=2, max_ongoing_requests=100)
class AsyncNoop:
    async def __call__(self, x: Any) -> Any:
        return x


async def load(handle: Any, inflight: int, seconds: float) -> int:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await handle.remote(1)
            done += 1

    await asyncio.gather(*(worker() for _ in range(inflight)))
    return done


def sequential(handle: Any, seconds: float) -> int:
    done = 0
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        handle.remote(1).result()
        done += 1
    return done


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--inflight", type=int, default=64, help="calls in flight (1: sequential sync calls, W2)")
    p.add_argument("--seconds", type=float, default=5.0, help="measured window")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--kind", choices=("sync", "async"), default="sync", help="the deployment's __call__")
    args = p.parse_args()
    app = (SyncNoop if args.kind == "sync" else AsyncNoop).bind()
    handle = serve.run(app)
    ctx = current_context()
    assert ctx is not None
    db = ctx.registry.redis

    def run(seconds: float) -> int:
        if args.inflight == 1:
            return sequential(handle, seconds)
        return asyncio.run(load(handle, args.inflight, seconds))

    try:
        run(args.warmup)
        procs = processes()
        before = {pid: cpu_s(pid) for pid in procs}
        db.config_resetstat()
        start = time.perf_counter()
        calls = run(args.seconds)
        elapsed = time.perf_counter() - start
        after = {pid: cpu_s(pid) for pid in procs}
        stats = db.info("commandstats")
    finally:
        serve.shutdown()
    per_call_us: dict[str, float] = {}
    for pid, name in procs.items():
        per_call_us[name] = round((after[pid] - before[pid]) / calls * 1e6, 1)
    commands = {name.removeprefix("cmdstat_"): round(int(v["calls"]) / calls, 3)
                for name, v in stats.items() if int(v["calls"]) / calls >= 0.01 and name != "cmdstat_config"}
    log.info("%d calls in %.1f s; CPU us per call %s", calls, elapsed, per_call_us)
    emit("cpu_per_call", kind=args.kind, inflight=args.inflight, calls_per_s=round(calls / elapsed, 1),
         cpu_us_per_call=per_call_us, cpu_us_per_call_total=round(sum(per_call_us.values()), 1),
         redis_commands_per_call=commands)


if __name__ == "__main__":
    main()
