"""Faults injected on purpose: replicas killed under load, Redis restarted (with and
without persistence), callers and gateways killed mid-request, stuck methods.

Each test runs its own cluster (worker and gateway processes) in a namespace of its own,
often on a Redis server of its own, so that it can break things freely.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import httpx
import pytest
import redis

from actors import serve
from actors.exceptions import ReplicaDiedError, RequestCancelledError, RequestLostError
from tests.cluster import cluster_on, free_port, poll, settle_keys
from tests.conftest import ROOT
from tests.redis_servers import RedisServer


@serve.deployment
class Counted:
    """Counts, in Redis, how many times each token ran: proof of at-most-once."""

    def __init__(self, url: str, prefix: str) -> None:
        self.redis = redis.Redis.from_url(url)
        self.prefix = prefix

    def __call__(self, token: str, work_s: float = 0.02) -> str:
        self.redis.incr(f"{self.prefix}:{token}")
        time.sleep(work_s)
        return token


# Replica death --------------------------------------------------------------------------------

def test_replicas_killed_under_load_fail_or_retry_but_never_hang(redis_url: str) -> None:
    """300 calls/s over two deployments of 3 replicas; a replica SIGKILLed every ~2.5 s
    for 30 s. With max_request_retries=0 (default) a lost call fails with
    ReplicaDiedError and never runs twice; with 3 every call succeeds, run at most 4 times."""
    prefix = f"runs-{uuid.uuid4().hex[:6]}"
    with cluster_on(redis_url, workers=2) as (cluster, _):
        once = serve.run(Counted.options(num_replicas=3, name="Once").bind(redis_url, prefix),
                         name="once", route_prefix="/once")
        retried = serve.run(Counted.options(num_replicas=3, name="Retried", max_request_retries=3)
                            .bind(redis_url, prefix), name="retried", route_prefix="/retried")
        outcomes: dict[str, list[tuple[str, object, float]]] = {"once": [], "retried": []}
        stop = threading.Event()
        kills: list[int] = []

        def killer() -> None:
            rng = random.Random(7)
            while not stop.wait(2.5):
                app, dep = rng.choice([("once", "Once"), ("retried", "Retried")])
                running = [r for r in cluster.registry.replicas(app, dep).values() if r.get("state") == "RUNNING"]
                if running:
                    victim = rng.choice(running)["pid"]
                    try:
                        os.kill(victim, signal.SIGKILL)
                        kills.append(victim)
                    except ProcessLookupError:
                        pass

        async def load() -> None:
            async def one(app: str, handle, token: str) -> None:
                start = time.monotonic()
                try:
                    result: object = await asyncio.wait_for(handle.remote(token), 60)
                except Exception as e:  # noqa: BLE001 - recorded and checked below
                    result = e
                outcomes[app].append((token, result, time.monotonic() - start))

            tasks = []
            begin = time.monotonic()
            for i in range(9000):  # 300/s for 30 s
                await asyncio.sleep(max(0.0, begin + i / 300 - time.monotonic()))
                app, handle = ("once", once) if i % 2 == 0 else ("retried", retried)
                tasks.append(asyncio.ensure_future(one(app, handle, f"{app}-{i}")))
            await asyncio.gather(*tasks)

        thread = threading.Thread(target=killer)
        thread.start()
        try:
            asyncio.run(load())
        finally:
            stop.set()
            thread.join()
        runs = redis.Redis.from_url(redis_url)
        assert len(kills) >= 8
        for app, results in outcomes.items():
            assert len(results) == 4500
            late = [d for _, _, d in results if d >= 60]
            assert not late, f"{len(late)} calls of {app} did not end before their timeout"
            for token, result, _ in results:
                assert result == token or isinstance(result, ReplicaDiedError), (app, token, result)
        counts = dict(zip((t for t, _, _ in outcomes["once"]),
                          (int(c or 0) for c in runs.mget([f"{prefix}:{t}" for t, _, _ in outcomes["once"]]))))
        died = [t for t, r, _ in outcomes["once"] if isinstance(r, ReplicaDiedError)]
        assert died, "no kill hit a running request: the test proved nothing"
        assert max(counts.values()) == 1, "a request ran twice without max_request_retries"
        assert all(counts[t] == 1 for t, r, _ in outcomes["once"] if r == t)
        retried_counts = [int(c or 0) for c in runs.mget([f"{prefix}:{t}" for t, _, _ in outcomes["retried"]])]
        assert all(r == t for t, r, _ in outcomes["retried"]), "a retried deployment lost a call"
        assert 1 <= min(retried_counts) and max(retried_counts) <= 4
        assert max(retried_counts) >= 2, "no retry happened: the test proved nothing"
        for key in runs.scan_iter(match=f"{prefix}:*", count=1000):
            runs.delete(key)


# Redis restarts -------------------------------------------------------------------------------

@serve.deployment(max_ongoing_requests=1)
class Sleeper:
    async def __call__(self, x) -> object:
        if not isinstance(x, (int, float)):  # an HTTP request
            return "pong"
        await asyncio.sleep(0.2)
        return x


def _restart(server: RedisServer, args: list[str]) -> RedisServer:
    server.stop()
    return RedisServer(args)


def test_redis_restart_with_persistence_loses_nothing(tmp_path) -> None:
    port = free_port()
    args = ["--port", str(port), "--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path)]
    server = RedisServer(args)
    try:
        with cluster_on(f"redis://127.0.0.1:{port}/0", gateway=True) as (cluster, http_port):
            handle = serve.run(Sleeper.bind(), name="p", route_prefix="/p")
            pending = [handle.remote(i) for i in range(10)]  # about 2 s of queued work
            server = _restart(server, args)
            assert [r.result(timeout_s=60) for r in pending] == list(range(10))
            assert handle.remote(42).result(timeout_s=30) == 42
            assert httpx.get(f"http://127.0.0.1:{http_port}/p", timeout=30).text == "pong"
    finally:
        server.stop()


def test_redis_restart_without_persistence_restores_the_registry_and_serving() -> None:
    port = free_port()
    args = ["--port", str(port)]
    server = RedisServer(args)
    try:
        with cluster_on(f"redis://127.0.0.1:{port}/0", gateway=True) as (cluster, http_port):
            handle = serve.run(Sleeper.bind(), name="np", route_prefix="/np")
            assert handle.remote(1).result(timeout_s=30) == 1
            pending = [handle.remote(i) for i in range(10)]
            server = _restart(server, args)
            restarted = time.monotonic()
            # Queued requests died with Redis's data: their callers are told, not left hanging.
            for r in pending:
                try:
                    assert isinstance(r.result(timeout_s=30), int)
                except RequestLostError:
                    pass
            # Nobody redeploys: workers and replicas write their records back.
            poll(lambda: _answers(handle), timeout_s=20, interval_s=0.2, what="handle calls to work again")
            poll(lambda: _http_answers(http_port), timeout_s=20, interval_s=0.2, what="the route to come back")
            resumed_in = time.monotonic() - restarted
            assert resumed_in < 10, f"serving resumed after {resumed_in:.1f} s"
            status = serve.status().applications["np"]
            assert status.route_prefix == "/np" and status.deployments["Sleeper"].replica_states == {"RUNNING": 1}
    finally:
        server.stop()


def _answers(handle) -> bool:
    try:
        return handle.remote(7).result(timeout_s=2) == 7
    except Exception:  # noqa: BLE001 - not back yet
        return False


def _http_answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/np", timeout=2).text == "pong"
    except httpx.HTTPError:
        return False


# Callers and gateways that die ----------------------------------------------------------------

CALLER = '''
import sys, time
real_time = time.time
time.time = lambda: real_time() + 60  # this "machine"'s clock is a minute ahead
from actors import serve
handle = serve.get_app_handle("slow")
pending = [handle.remote(str(i), 0.5) for i in range(60)]
pending[0].result(timeout_s=30)
print("sent", flush=True)
sys.stdin.read()
'''


def test_a_dead_callers_queued_requests_never_run_and_its_keys_expire(redis_url: str) -> None:
    """Also when the caller's clock disagrees with the replica's: ages are in Redis's time."""
    prefix = f"runs-{uuid.uuid4().hex[:6]}"
    with cluster_on(redis_url, MQSERVE_RESULT_TTL_S="3") as (cluster, _):
        handle = serve.run(Counted.options(max_ongoing_requests=1).bind(redis_url, prefix), name="slow",
                           route_prefix=None)
        assert handle.remote("warm-up", 0).result(timeout_s=30) == "warm-up"
        idle = cluster.namespace_keys()
        env = {**os.environ, "PYTHONPATH": ROOT, "MQSERVE_REDIS_URL": redis_url}
        caller = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CALLER)], env=env, cwd=ROOT,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert caller.stdout is not None and caller.stdout.readline().strip() == "sent"
            caller.kill()
            caller.wait()
            queue = cluster.registry.keys.queue("slow", "Counted")
            poll(lambda: cluster.registry.redis.llen(queue) == 0, timeout_s=40, what="the queue to empty")
        finally:
            if caller.poll() is None:
                caller.kill()
                caller.wait()
        runs = redis.Redis.from_url(redis_url)
        ran = sum(int(v or 0) for v in runs.mget([f"{prefix}:{i}" for i in range(60)]))
        # About 10 s of work (the caller's alive key lasts 10 s) ran; the rest was dropped.
        assert 2 <= ran <= 40, ran
        settle_keys(cluster, idle)
        for key in runs.scan_iter(match=f"{prefix}:*", count=1000):
            runs.delete(key)


@serve.deployment(max_ongoing_requests=4)
class SlowHttp:
    async def __call__(self, request) -> object:
        if request.url.path.endswith("/stream"):
            async def gen():
                for i in range(5):
                    await asyncio.sleep(0.2)
                    yield f"{i}\n"
            return gen()
        await asyncio.sleep(1.0)
        return "done"


def test_a_dead_gateways_requests_finish_or_drop_and_keys_expire(redis_url: str) -> None:
    with cluster_on(redis_url, MQSERVE_RESULT_TTL_S="3") as (cluster, _):
        serve.run(SlowHttp.bind(), name="web", route_prefix="/web")
        port = free_port()
        gateway = cluster.add_gateway(port)
        idle = cluster.namespace_keys()

        def hit(path: str) -> None:
            try:
                httpx.get(f"http://127.0.0.1:{port}{path}", timeout=30)
            except httpx.HTTPError:
                pass

        threads = [threading.Thread(target=hit, args=("/web/stream" if i % 3 == 0 else "/web",)) for i in range(12)]
        for t in threads:
            t.start()
        poll(lambda: cluster.registry.redis.llen(cluster.registry.keys.queue("web", "SlowHttp")) > 0,
             what="requests to queue up")
        gateway.kill()
        gateway.wait()
        cluster.gateways.pop(port)
        for t in threads:
            t.join(timeout=30)
        settle_keys(cluster, idle)
        assert cluster.registry.redis.llen(cluster.registry.keys.queue("web", "SlowHttp")) == 0


# Stuck methods --------------------------------------------------------------------------------

@serve.deployment(max_ongoing_requests=1)
class Stuck:
    def __init__(self) -> None:
        self.started: list[str] = []

    async def hang(self, token: str) -> str:
        self.started.append(token)
        await asyncio.Event().wait()
        return token

    def block(self, token: str, seconds: float) -> str:
        self.started.append(token)
        time.sleep(seconds)
        return token

    def log(self) -> list[str]:
        return list(self.started)


def test_stuck_methods_time_out_and_abandoned_requests_never_start(redis_url: str) -> None:
    with cluster_on(redis_url) as (cluster, _):
        handle = serve.run(Stuck.options(max_ongoing_requests=1).bind(), name="stuck", route_prefix=None)

        async def await_with_deadline() -> None:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(handle.hang.remote("a"), 1.0)

        # An async method: the caller's deadline cancels it, which frees the slot.
        asyncio.run(await_with_deadline())
        assert handle.block.remote("b", 0.0).result(timeout_s=30) == "b"
        # A sync method cannot be interrupted: it keeps its slot until it returns, and a
        # request queued behind it whose caller gave up is withdrawn, never started.
        busy = handle.block.remote("c", 3.0)
        behind = handle.block.remote("d", 0.0)
        with pytest.raises(TimeoutError):
            behind.result(timeout_s=0.5)
        with pytest.raises(TimeoutError):
            busy.result(timeout_s=0.5)
        assert busy.result(timeout_s=30) == "c"  # the running one still answers later
        with pytest.raises(RequestCancelledError, match="withdrawn"):
            behind.result(timeout_s=5)
        assert handle.log.remote().result(timeout_s=30) == ["a", "b", "c"]
