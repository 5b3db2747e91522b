"""Soak: a steady mixed load for a long time, watching latency, memory and Redis for leaks.

A cluster on this machine (``_cluster.py``: a private ``redis-server``, 2 workers, this
process as the driver) plus one HTTP gateway (``python -m gateway``) started here. Calls
go out at a fixed ``--rate`` (open loop: a call starts on its slot whether or not the
previous ones finished), cycling through a fixed mix of kinds, each with its own
latency series:

- ``unary_sync`` / ``unary_async``: a sync and an async no-op (``await handle.remote(x)``);
- ``chain``: ``_common.chain_app``'s Ingress, which passes the Adder's response to the
  Multiplier on its replica; ``chain_direct``: the driver does the same itself;
- ``stream``: a sync generator of 20 items, read to the end with ``async for``;
- ``http``: ``GET /hello?name=N`` through the gateway (one ``httpx.AsyncClient``);
- ``timeout_async`` / ``timeout_sync``: a 0.5 s sleep awaited for 0.1 s, with
  ``asyncio.wait_for`` (which cancels the call) or ``.result(timeout_s=0.1)`` from a
  thread (the call runs on); a ``TimeoutError`` is the expected outcome;
- ``cancel``: a 0.3 s sleep, ``response.cancel()`` 0-20 ms after ``.remote()`` (queued or
  running), then awaited: ``RequestCancelledError`` is expected;
- ``stream_break``: a slow async generator (200 items, 5 ms apart), the consumer breaks
  after 3 items and drops it: the expected outcome is "cancelled".

After ``--warmup-s`` of load, every ``--window-s`` window records: p50/p99 latency of
each kind (of its expected outcome), counts of ok/error/timeout/cancelled, the RSS
(VmRSS) and CPU of every process (driver, redis, workers, gateway, each replica: found by
the namespace in their command lines), Redis's key count in the namespace (SCAN, also by
key kind) with ``used_memory`` and ``connected_clients``, and the driver's own pending
call maps. When the load stops, the key count is polled (up to ``--idle-wait-s``) until
it is back to the idle count measured before the load. One JSON line at the end.

``--result-ttl-s`` (30 by default; 0 keeps mqserve's 300) sets ``MQSERVE_RESULT_TTL_S``
for every process, so that keys that expire by design (unread results, cancel markers)
do so within the warm-up and the idle wait, and what is left is a leak.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import math
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx  # noqa: E402
from _cluster import ROOT, BenchCluster, _cpu, poll
from _common import emit, free_port, log, percentile

from actors import serve  # noqa: E402
from actors.exceptions import RequestCancelledError  # noqa: E402
from actors.runtime.procs import child_preexec, stop_process  # noqa: E402
from broker.connection import connect  # noqa: E402
from tests.procs import processes_with  # noqa: E402

logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise

# The deployments -------------------------------------------------------------------------


@serve.deployment(max_ongoing_requests=64)
class SyncNoop:
    def __call__(self, x: Any = None) -> Any:
        return x


@serve.deployment(max_ongoing_requests=64)
class AsyncNoop:
    async def __call__(self, x: Any = None) -> Any:
        return x


@serve.deployment(max_ongoing_requests=64)
class Streamer:
    def __call__(self, n: int):
        for i in range(n):
            yield i

    async def slow(self, n: int, delay_s: float):
        for i in range(n):
            await asyncio.sleep(delay_s)
            yield i


@serve.deployment(max_ongoing_requests=256)
class Sleeper:
    async def __call__(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds


@serve.deployment(max_ongoing_requests=64)
class Hello:
    async def __call__(self, request: Any) -> str:
        return f"Hello {request.query_params.get('name', '')}!"


# The mix (weights out of 100) and what each kind expects ------------------------------------

MIX = {"unary_sync": 18, "unary_async": 18, "chain": 10, "chain_direct": 6, "stream": 12, "http": 20,
       "timeout_async": 3, "timeout_sync": 3, "cancel": 5, "stream_break": 5}
EXPECTED = {k: "ok" for k in MIX} | {"timeout_async": "timeout", "timeout_sync": "timeout",
                                     "cancel": "cancelled", "stream_break": "cancelled"}
OUTCOMES = ("ok", "error", "timeout", "cancelled")
STREAM_ITEMS = 20
SLEEP_TIMEOUT_S, CALLER_TIMEOUT_S = 0.5, 0.1
SLEEP_CANCEL_S, CANCEL_AFTER_MAX_S = 0.3, 0.02
#: A call still unanswered after this long is counted as an error ("Hung").
GUARD_S = 30.0
#: Calls in flight above which a slot is skipped (and counted) rather than started.
MAX_OUTSTANDING = 2000


class WrongValue(Exception):
    pass


class Hung(Exception):
    pass


class Stats:
    """What the calls that completed during one window did."""

    def __init__(self) -> None:
        self.counts = {k: dict.fromkeys(OUTCOMES, 0) for k in MIX}
        self.lat: dict[str, list[float]] = {k: [] for k in MIX}
        self.started = 0
        self.skipped = 0

    def compact(self) -> dict[str, list[Any]]:
        """kind -> [ok, error, timeout, cancelled, p50_ms, p99_ms]."""
        out = {}
        for k in MIX:
            ms = sorted(x * 1000 for x in self.lat[k])
            c = self.counts[k]
            out[k] = [c["ok"], c["error"], c["timeout"], c["cancelled"],
                      _r(percentile(ms, 50)), _r(percentile(ms, 99))]
        return out


def _r(x: float, nd: int = 2) -> float | None:
    return None if x != x else round(x, nd)  # NaN -> null


# Processes, memory, Redis ----------------------------------------------------------------------


def vmrss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")]
    except OSError:
        return []


def _arg(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else "?"


def process_table(c: BenchCluster, gateway: subprocess.Popen[bytes] | None) -> dict[str, int]:
    """label -> pid of every process of the run: the driver, Redis (a private one), the
    workers, the gateway, and every replica (``replica:app/deployment``)."""
    table = {"driver": os.getpid()}
    if c.redis_proc is not None:
        table["redis"] = c.redis_proc.pid
    known = {os.getpid()}
    for name, proc in c.workers.items():
        label = "worker:" + name.rsplit("-", 1)[-1]
        table[label] = proc.pid
        known.add(proc.pid)
    if gateway is not None:
        table["gateway"] = gateway.pid
        known.add(gateway.pid)
    for pid in sorted(processes_with(c.namespace)):
        if pid in known:
            continue
        argv = _argv(pid)
        if "actors.runtime.replica" in argv:
            label = f"replica:{_arg(argv, '--app')}/{_arg(argv, '--deployment')}"
        else:
            label = f"other:{pid}"
        while label in table:
            label += "+"
        table[label] = pid
    return table


def key_kind(key: str, ns: str) -> str:
    rest = key[len(ns) + 1:]
    if rest.endswith(":alive"):
        return "alive"
    return rest.split(":", 1)[0]


def scan_keys(r: Any, ns: str) -> list[str]:
    return [k.decode() if isinstance(k, bytes) else k for k in r.scan_iter(match=f"{ns}:*", count=1000)]


def key_census(r: Any, ns: str, with_ttl: bool = False) -> dict[str, Any]:
    keys = scan_keys(r, ns)
    out: dict[str, Any] = {"keys": len(keys), "by_kind": dict(sorted(Counter(key_kind(k, ns) for k in keys).items()))}
    if with_ttl:
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.pttl(k)
        ttls = pipe.execute() if keys else []
        persistent = Counter(key_kind(k, ns) for k, t in zip(keys, ttls) if t == -1)
        out["no_ttl_by_kind"] = dict(sorted(persistent.items()))
        out["_keys"] = keys
    return out


def driver_client_state() -> dict[str, int]:
    """How many requests this process's CallClients still track, their event loop channels,
    and how many objects its garbage collector tracks."""
    import gc

    from actors.runtime import caller

    out = {"pending": 0, "channels": 0, "gc_objects": len(gc.get_objects())}
    for client in list(caller._clients.values()):
        out["pending"] += len(client._pending)
        out["channels"] += len(client._channels)
    return out


class Sampler:
    """One measurement of every process and of Redis (blocking: run it in a thread)."""

    def __init__(self, c: BenchCluster, gateway: subprocess.Popen[bytes]) -> None:
        self.c, self.gateway = c, gateway
        self.redis = connect(c.url)
        self.last_cpu: dict[str, float] = {}
        self.last_t = time.monotonic()

    def sample(self, with_ttl: bool = False) -> dict[str, Any]:
        table = process_table(self.c, self.gateway)
        rss = {label: vmrss_kb(pid) for label, pid in table.items()}
        now = time.monotonic()
        cpu_now = {label: _cpu(pid) for label, pid in table.items()}
        dt = now - self.last_t
        roles: Counter[str] = Counter()
        for label, sec in cpu_now.items():
            if label in self.last_cpu:
                roles[label.split(":", 1)[0]] += max(0.0, sec - self.last_cpu[label])
        self.last_cpu, self.last_t = cpu_now, now
        census = key_census(self.redis, self.c.namespace, with_ttl)
        mem = self.redis.info("memory")
        clients = self.redis.info("clients")
        return {
            "pids": table,
            "rss_mb": {label: round(kb / 1024, 1) for label, kb in rss.items() if kb is not None},
            "cpu_cores": {role: round(sec / dt, 2) for role, sec in sorted(roles.items())} if dt > 0 else {},
            **census,
            "used_memory": int(mem["used_memory"]),
            "redis_clients": int(clients["connected_clients"]),
        }


# The load ----------------------------------------------------------------------------------------


class Soak:
    def __init__(self, args: argparse.Namespace, c: BenchCluster, gateway: subprocess.Popen[bytes],
                 port: int, handles: dict[str, Any]) -> None:
        self.args, self.c, self.gateway, self.port, self.h = args, c, gateway, port, handles
        self.cur = Stats()
        self.errors: Counter[str] = Counter()
        self.error_samples: dict[str, str] = {}
        self.outstanding: set[asyncio.Task[None]] = set()
        self.threads = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="soak-sync")
        self.rng = random.Random(1)
        self.http: httpx.AsyncClient | None = None

    # One call of each kind: returns normally for the kind's expected outcome, or raises.
    async def unary_sync(self) -> None:
        x = self.rng.randrange(1 << 30)
        if (v := await self.h["sync"].remote(x)) != x:
            raise WrongValue(f"{v!r} != {x!r}")

    async def unary_async(self) -> None:
        x = self.rng.randrange(1 << 30)
        if (v := await self.h["async"].remote(x)) != x:
            raise WrongValue(f"{v!r} != {x!r}")

    async def chain(self) -> None:
        x = self.rng.randrange(1000)
        if (v := await self.h["chain"].remote(x)) != (x + 1) * 2:
            raise WrongValue(f"{v!r} != {(x + 1) * 2!r}")

    async def chain_direct(self) -> None:
        x = self.rng.randrange(1000)
        if (v := await self.h["mult"].remote(self.h["add"].remote(x))) != (x + 1) * 2:
            raise WrongValue(f"{v!r} != {(x + 1) * 2!r}")

    async def stream(self) -> None:
        items = [i async for i in self.h["stream"].remote(STREAM_ITEMS)]
        if items != list(range(STREAM_ITEMS)):
            raise WrongValue(f"streamed {items!r}")

    async def stream_break(self) -> str:
        n = 0
        async for item in self.h["slow"].remote(200, 0.005):
            if item != n:
                raise WrongValue(f"item {n} was {item!r}")
            n += 1
            if n == 3:
                break  # and drop the generator: the replica's generator must stop
        if n != 3:
            raise WrongValue(f"stream ended after {n} items")
        return "cancelled"

    async def http_call(self) -> None:
        assert self.http is not None
        name = str(self.rng.randrange(1 << 30))
        resp = await self.http.get("/hello", params={"name": name})
        if resp.status_code != 200 or resp.text != f"Hello {name}!":
            raise WrongValue(f"HTTP {resp.status_code}: {resp.text[:200]!r}")

    async def timeout_async(self) -> None:
        v = await asyncio.wait_for(self.h["sleep"].remote(SLEEP_TIMEOUT_S), CALLER_TIMEOUT_S)
        raise WrongValue(f"returned {v!r} within {CALLER_TIMEOUT_S} s")

    async def timeout_sync(self) -> None:
        def call() -> None:
            v = self.h["sleep"].remote(SLEEP_TIMEOUT_S).result(timeout_s=CALLER_TIMEOUT_S)
            raise WrongValue(f"returned {v!r} within {CALLER_TIMEOUT_S} s")

        await asyncio.get_running_loop().run_in_executor(self.threads, call)

    async def cancel(self) -> None:
        resp = self.h["sleep"].remote(SLEEP_CANCEL_S)
        await asyncio.sleep(self.rng.uniform(0, CANCEL_AFTER_MAX_S))
        resp.cancel()
        await resp  # RequestCancelledError expected

    # Running them ------------------------------------------------------------------------
    async def run_one(self, kind: str) -> None:
        fn: Callable[[], Any] = {"http": self.http_call}.get(kind) or getattr(self, kind)
        t0 = time.perf_counter()
        err: BaseException | None = None
        try:
            try:
                outcome = await asyncio.wait_for(fn(), GUARD_S) or "ok"
            except TimeoutError:
                if time.perf_counter() - t0 >= GUARD_S - 0.5:
                    raise Hung(f"no answer within {GUARD_S} s") from None
                outcome = "timeout"
        except RequestCancelledError:
            outcome = "cancelled"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # every unexpected failure is counted, none stops the run
            outcome, err = "error", e
        elapsed = time.perf_counter() - t0
        st = self.cur
        st.counts[kind][outcome] += 1
        if outcome == EXPECTED[kind]:
            st.lat[kind].append(elapsed)
        elif err is not None:
            name = f"{kind}:{type(err).__name__}"
            self.errors[name] += 1
            self.error_samples.setdefault(name, str(err)[:300])
        else:
            self.errors[f"{kind}:unexpected-{outcome}"] += 1

    async def spawn_loop(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        slots = [k for k, w in MIX.items() for _ in range(w)]
        random.Random(2).shuffle(slots)
        start, i = loop.time(), 0
        while True:
            at = start + i / self.args.rate
            if at >= until:
                return
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            kind = slots[i % len(slots)]
            i += 1
            if len(self.outstanding) >= MAX_OUTSTANDING:
                self.cur.skipped += 1
                continue
            self.cur.started += 1
            task = asyncio.create_task(self.run_one(kind))
            self.outstanding.add(task)
            task.add_done_callback(self.outstanding.discard)

    async def prime(self) -> None:
        """Every kind once, sequentially, so that every caller channel exists before the
        idle baseline (their heartbeat keys are part of it)."""
        for kind in MIX:
            await self.run_one(kind)
        if self.errors:
            raise RuntimeError(f"priming calls failed: {dict(self.errors)} {self.error_samples}")
        self.cur = Stats()

    async def run(self) -> dict[str, Any]:
        args = self.args
        loop = asyncio.get_running_loop()
        sampler = Sampler(self.c, self.gateway)
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", limits=limits, timeout=GUARD_S)
        try:
            await self.prime()
            ttl = float(os.environ.get("MQSERVE_RESULT_TTL_S") or 300)
            settle = min(ttl + 5, args.settle_max_s)
            log.info("primed; %.0f s for the priming calls' keys to expire, then the idle baseline", settle)
            await asyncio.sleep(settle)
            idle_before = await asyncio.to_thread(sampler.sample, True)
            idle_before.pop("_keys", None)
            log.info("idle baseline: %d keys %s, used_memory %d", idle_before["keys"], idle_before["by_kind"],
                     idle_before["used_memory"])

            t0 = loop.time()
            warm_end = t0 + args.warmup_s
            end = warm_end + args.duration_s
            spawner = asyncio.create_task(self.spawn_loop(end))
            log.info("load: %.0f calls/s, %.0f s warm-up + %.0f s measured", args.rate, args.warmup_s, args.duration_s)
            await asyncio.sleep(max(0.0, warm_end - loop.time()))
            warm_stats, self.cur = self.cur, Stats()
            start_sample = await asyncio.to_thread(sampler.sample)
            windows = []
            n_windows = max(1, math.ceil(args.duration_s / args.window_s - 1e-9))
            for w in range(n_windows):
                w_end = min(warm_end + (w + 1) * args.window_s, end)
                await asyncio.sleep(max(0.0, w_end - loop.time()))
                w_len = args.window_s if w < n_windows - 1 else end - (warm_end + w * args.window_s)
                stats, self.cur = self.cur, Stats()
                s = await asyncio.to_thread(sampler.sample)
                windows.append({"t": round(w_end - warm_end), "rate": round(stats.started / w_len, 1),
                                "skipped": stats.skipped, "kinds": stats.compact(), "rss_mb": s["rss_mb"],
                                "cpu_cores": s["cpu_cores"], "keys": s["keys"], "keys_by": s["by_kind"],
                                "used_memory": s["used_memory"], "redis_clients": s["redis_clients"],
                                "driver": {"tasks": len(self.outstanding), **driver_client_state()},
                                "_pids": s["pids"]})
                log.info("window %d/%d: %s", w + 1, n_windows, _window_line(windows[-1]))
            await spawner
            # The load stops: let the calls in flight finish, then watch the keys go.
            stop_t = time.monotonic()
            if self.outstanding:
                await asyncio.wait(set(self.outstanding), timeout=GUARD_S + 5)
            abandoned = len(self.outstanding)
            for task in list(self.outstanding):
                task.cancel()
            tail_stats = self.cur
            at_stop = await asyncio.to_thread(sampler.sample, True)
            at_stop.pop("_keys", None)
            idle_after = at_stop
            while True:
                waited = time.monotonic() - stop_t
                if idle_after["keys"] <= idle_before["keys"] or waited >= args.idle_wait_s:
                    break
                await asyncio.sleep(1.0)
                idle_after = await asyncio.to_thread(sampler.sample, True)
            extra_keys = idle_after.pop("_keys", [])
            idle_after["waited_s"] = round(time.monotonic() - stop_t, 1)
            idle_after["driver"] = driver_client_state()
            # Name a few of the keys that are still there beyond the baseline's kinds.
            base_kinds = idle_before["by_kind"]
            idle_after["extra_by_kind"] = {k: n - base_kinds.get(k, 0) for k, n in idle_after["by_kind"].items()
                                           if n != base_kinds.get(k, 0)}
            idle_after["extra_examples"] = [k for k in extra_keys
                                            if key_kind(k, self.c.namespace) in idle_after["extra_by_kind"]][:8]
        finally:
            await self.http.aclose()
            self.threads.shutdown(wait=False, cancel_futures=True)
        return {"idle_before": idle_before, "warmup": warm_stats, "start": start_sample, "windows": windows,
                "tail": tail_stats, "at_stop": at_stop, "idle_after": idle_after, "abandoned": abandoned}


def _window_line(w: dict[str, Any]) -> str:
    lat = " ".join(f"{k}={v[4]}/{v[5]}" for k, v in w["kinds"].items())
    errs = sum(v[1] for v in w["kinds"].values())
    return (f"rate {w['rate']}/s errors {errs} keys {w['keys']} used_memory {w['used_memory']} "
            f"cpu {w['cpu_cores']} p50/p99 ms {lat}")


# The verdict -----------------------------------------------------------------------------------

#: Beyond noise: RSS +2 MiB and +5 % from the first window to the last, with the last
#: third of the windows above the first third by as much; p50 x1.5 and +1 ms, p99 x2 and
#: +5 ms; keys and used_memory +20 % (and +20 keys, +1 MiB); Redis connections and the
#: driver's pending-call maps +20 % (and +10, +100 entries); keys at idle above the
#: baseline after the idle wait.
def growth(res: dict[str, Any]) -> dict[str, Any]:
    wins = res["windows"]
    found: list[str] = []
    third = max(1, len(wins) // 3)

    def trend(values: list[float]) -> tuple[float, float]:
        return sum(values[:third]) / third, sum(values[-third:]) / third

    labels = sorted(set(wins[0]["rss_mb"]) & set(wins[-1]["rss_mb"]))
    for label in labels:
        series = [w["rss_mb"].get(label) for w in wins]
        if None in series or wins[0]["_pids"].get(label) != wins[-1]["_pids"].get(label):
            found.append(f"{label}: process replaced or missing during the run")
            continue
        first, last = series[0], series[-1]
        a, b = trend(series)
        limit = max(2.0, 0.05 * first)
        if last - first > limit and b - a > limit:
            found.append(f"{label} RSS {first} -> {last} MB")
    for kind in MIX:
        f, last = wins[0]["kinds"][kind], wins[-1]["kinds"][kind]
        if None in (f[4], last[4], f[5], last[5]):
            continue
        if last[4] > 1.5 * f[4] and last[4] - f[4] > 1.0:
            found.append(f"{kind} p50 {f[4]} -> {last[4]} ms")
        if last[5] > 2 * f[5] and last[5] - f[5] > 5.0:
            found.append(f"{kind} p99 {f[5]} -> {last[5]} ms")
    k0, k1 = res["start"]["keys"], wins[-1]["keys"]
    if k1 > 1.2 * k0 and k1 - k0 > 20:
        found.append(f"redis keys {k0} -> {k1} under load")
    m0, m1 = res["start"]["used_memory"], wins[-1]["used_memory"]
    if m1 > 1.2 * m0 and m1 - m0 > 1 << 20:
        found.append(f"redis used_memory {m0} -> {m1} under load")
    c0, c1 = res["start"]["redis_clients"], wins[-1]["redis_clients"]
    if c1 > 1.2 * c0 and c1 - c0 > 10:
        found.append(f"redis connected_clients {c0} -> {c1} under load")
    d0, d1 = wins[0]["driver"]["pending"], wins[-1]["driver"]["pending"]
    if d1 > 1.2 * d0 and d1 - d0 > 100:
        found.append(f"driver CallClient._pending {d0} -> {d1} requests (first -> last window)")
    ib, ia = res["idle_before"]["keys"], res["idle_after"]["keys"]
    if ia > ib:
        found.append(f"redis keys at idle {ib} before the load, {ia} {res['idle_after']['waited_s']} s after it "
                     f"(extra: {res['idle_after']['extra_by_kind']})")
    return {"grew": bool(found), "findings": found}


# Main ------------------------------------------------------------------------------------------


def start_gateway(c: BenchCluster) -> tuple[subprocess.Popen[bytes], int]:
    """``python -m gateway`` for the cluster's namespace on a free port; waits until it
    serves and is registered."""
    port = free_port()
    env = {**os.environ, "MQSERVE_NAMESPACE": c.namespace, "PYTHONPATH": ROOT}
    env.pop("MQSERVE_REDIS_URL", None)
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--redis-url", c.url, "--namespace", c.namespace,
             "--host", "127.0.0.1", "--port", str(port), "--ready-fd", str(write_fd)],
            env=env, cwd="/", stdin=subprocess.DEVNULL, pass_fds=(write_fd,), preexec_fn=child_preexec)
    finally:
        os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as ready:
            line = ready.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"the gateway did not start on port {port} (status {proc.poll()})")
        assert c.registry is not None
        poll(lambda: any(g.get("pid") == proc.pid for g in c.registry.gateways().values()),
             what="the gateway to register")
    except BaseException:
        stop_process(proc)
        raise
    return proc, port


def deploy() -> dict[str, Any]:
    from _common import chain_app

    h = {
        "sync": serve.run(SyncNoop.bind(), name="sync", route_prefix=None),
        "async": serve.run(AsyncNoop.bind(), name="async", route_prefix=None),
        "chain": serve.run(chain_app(), name="chain", route_prefix=None),
        "stream": serve.run(Streamer.bind(), name="stream", route_prefix=None).options(stream=True),
        "sleep": serve.run(Sleeper.bind(), name="sleep", route_prefix=None),
    }
    serve.run(Hello.bind(), name="http", route_prefix="/hello")
    h["slow"] = h["stream"].options(method_name="slow", stream=True)
    h["add"] = serve.get_deployment_handle("Adder", "chain")
    h["mult"] = serve.get_deployment_handle("Multiplier", "chain")
    return h


def summarize(args: argparse.Namespace, c: BenchCluster, res: dict[str, Any]) -> dict[str, Any]:
    wins = res["windows"]
    first, last = wins[0], wins[-1]
    totals = {k: dict.fromkeys(OUTCOMES, 0) for k in MIX}
    for w in wins:
        for k, v in w["kinds"].items():
            for i, o in enumerate(OUTCOMES):
                totals[k][o] += v[i]
    for st in (res["warmup"], res["tail"]):
        for k in MIX:
            for o in OUTCOMES:
                totals[k][o] += st.counts[k][o]
    verdict = growth(res)
    for w in wins:
        del w["_pids"]
    at_stop, idle_before, idle_after = res["at_stop"], res["idle_before"], res["idle_after"]
    return {
        "config": {"duration_s": args.duration_s, "warmup_s": args.warmup_s, "window_s": args.window_s,
                   "rate": args.rate, "mix": MIX, "workers": 2, "gateways": 1,
                   "result_ttl_s": float(os.environ.get("MQSERVE_RESULT_TTL_S") or 300),
                   "stream_items": STREAM_ITEMS, "timeout": [SLEEP_TIMEOUT_S, CALLER_TIMEOUT_S],
                   "cancel": [SLEEP_CANCEL_S, CANCEL_AFTER_MAX_S], "redis": c.redis_kind},
        "windows": wins,
        "first_vs_last": {k: {"p50_ms": [first["kinds"][k][4], last["kinds"][k][4]],
                              "p99_ms": [first["kinds"][k][5], last["kinds"][k][5]]} for k in MIX},
        "totals": totals,
        "errors": dict(res["errors"]), "error_samples": res["error_samples"],
        "warmup_counts": {k: [v for v in res["warmup"].counts[k].values()] for k in MIX},
        "rss_mb": {"start": res["start"]["rss_mb"], "end": last["rss_mb"], "idle": idle_after["rss_mb"]},
        "redis": {
            "keys": {"idle_before": idle_before["keys"], "after_warmup": res["start"]["keys"],
                     "end": last["keys"], "at_stop": at_stop["keys"], "idle_after": idle_after["keys"],
                     "idle_after_waited_s": idle_after["waited_s"],
                     "back_to_idle": idle_after["keys"] <= idle_before["keys"]},
            "keys_by_kind": {"idle_before": idle_before["by_kind"], "after_warmup": res["start"]["by_kind"],
                             "end": last["keys_by"], "idle_after": idle_after["by_kind"]},
            "no_ttl_keys_by_kind": {"idle_before": idle_before["no_ttl_by_kind"],
                                    "at_stop": at_stop["no_ttl_by_kind"], "idle_after": idle_after["no_ttl_by_kind"]},
            "idle_extra_by_kind": idle_after["extra_by_kind"], "idle_extra_examples": idle_after["extra_examples"],
            "used_memory": {"idle_before": idle_before["used_memory"], "after_warmup": res["start"]["used_memory"],
                            "end": last["used_memory"], "idle_after": idle_after["used_memory"]},
            "clients": {"idle_before": idle_before["redis_clients"], "after_warmup": res["start"]["redis_clients"],
                        "end": last["redis_clients"], "idle_after": idle_after["redis_clients"]},
        },
        "driver_after_idle": idle_after["driver"],
        "abandoned_calls": res["abandoned"],
        "growth": verdict,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration-s", type=float, default=600.0, help="measured load, after the warm-up")
    p.add_argument("--warmup-s", type=float, default=60.0, help="load before the first window")
    p.add_argument("--window-s", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=100.0, help="calls started per second, all kinds together")
    p.add_argument("--result-ttl-s", type=float, default=30.0,
                   help="MQSERVE_RESULT_TTL_S for every process (0: leave mqserve's default, 300)")
    p.add_argument("--idle-wait-s", type=float, default=60.0,
                   help="how long to wait, after the load, for the key count to return to idle")
    p.add_argument("--settle-max-s", type=float, default=40.0,
                   help="longest wait, after the priming calls, before the idle baseline")
    args = p.parse_args()
    if args.result_ttl_s > 0:
        os.environ["MQSERVE_RESULT_TTL_S"] = str(args.result_ttl_s)

    result: dict[str, Any] = {}
    namespace = ""
    with BenchCluster(workers=2) as c:
        namespace = c.namespace
        gateway: subprocess.Popen[bytes] | None = None
        try:
            gateway, port = start_gateway(c)
            handles = deploy()
            log.info("deployed: %s", {label: pid for label, pid in process_table(c, gateway).items()})
            soak = Soak(args, c, gateway, port, handles)
            res = asyncio.run(soak.run())
            res["errors"], res["error_samples"] = soak.errors, soak.error_samples
            result = summarize(args, c, res)
        finally:
            if gateway is not None:
                stop_process(gateway)
    left = processes_with(namespace) if namespace else []
    emit("soak", **result, processes_left=left)


if __name__ == "__main__":
    main()
