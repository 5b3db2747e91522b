"""Replicas: how many run, how much each runs at once, and deploy/delete/status."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from actors import serve
from actors.config import ConfigError
from actors.exceptions import DeploymentUnavailableError
from actors.runtime.node import KILL_GRACE_S
from tests.cluster import poll


@serve.deployment(num_replicas=2, max_ongoing_requests=1)
class Slow:
    def __call__(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()


@serve.deployment(max_ongoing_requests=3)
class Gate:
    """Sync method: passes only when 3 calls run at once on the thread pool."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(3, timeout=10)
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def __call__(self) -> int:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            self.barrier.wait()
            time.sleep(0.05)
        finally:
            with self.lock:
                self.running -= 1
        return threading.get_ident()

    def peak_seen(self) -> int:
        return self.peak


@serve.deployment(max_ongoing_requests=4)
class AsyncGate:
    """Async method: counts how many calls overlap on the replica's event loop."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0

    async def __call__(self, seconds: float) -> str:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(seconds)
        self.running -= 1
        return "done"

    def peak_seen(self) -> int:
        return self.peak


@serve.deployment
class Broken:
    def __init__(self, why: str) -> None:
        raise KeyError(why)


@serve.deployment
class Version:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __call__(self) -> str:
        return self.tag


def test_replicas_share_the_queue_and_idle_ones_take_work(serve_instance) -> None:
    handle = serve.run(Slow.bind(), name="slow", route_prefix="/slow")
    # Given two replicas that each run one request at a time
    # When four 0.3 s requests are sent at once
    start = time.monotonic()
    pids = [r.result(timeout_s=30) for r in [handle.remote(0.3) for _ in range(4)]]
    # Then both replicas served (two each), so it took about two rounds, not four
    assert len(set(pids)) == 2
    assert time.monotonic() - start < 1.15
    status = serve.status().applications["slow"].deployments["Slow"]
    assert status.replica_states == {"RUNNING": 2}


def test_sync_methods_run_concurrently_up_to_max_ongoing(serve_instance) -> None:
    handle = serve.run(Gate.bind(), name="gate", route_prefix="/gate")
    threads = {r.result(timeout_s=30) for r in [handle.remote() for _ in range(6)]}
    assert len(threads) >= 2  # several threads of the pool
    assert handle.peak_seen.remote().result() == 3


def test_async_methods_interleave_on_the_loop_up_to_max_ongoing(serve_instance) -> None:
    handle = serve.run(AsyncGate.bind(), name="agate", route_prefix="/agate")
    responses = [handle.remote(0.2) for _ in range(10)]
    assert [r.result(timeout_s=30) for r in responses] == ["done"] * 10
    assert handle.peak_seen.remote().result() == 4


def test_constructor_error_fails_serve_run_with_its_type(serve_instance) -> None:
    with pytest.raises(KeyError, match="no model file"):
        serve.run(Broken.bind("no model file"), name="broken", route_prefix="/broken")
    app = serve.status().applications["broken"]
    assert app.status == "DEPLOY_FAILED"
    assert "no model file" in app.deployments["Broken"].message
    serve.delete("broken")


def test_redeploy_under_the_same_name_upgrades(serve_instance) -> None:
    handle = serve.run(Version.bind("v1"), name="ver", route_prefix="/ver")
    assert handle.remote().result() == "v1"
    handle = serve.run(Version.bind("v2"), name="ver", route_prefix="/ver")
    assert {handle.remote().result(timeout_s=10) for _ in range(5)} == {"v2"}


def test_two_apps_cannot_share_a_route_prefix(serve_instance) -> None:
    serve.run(Version.bind("a"), name="first", route_prefix="/shared")
    with pytest.raises(ConfigError, match="already used by application 'first'"):
        serve.run(Version.bind("b"), name="second", route_prefix="/shared")
    assert "second" not in serve.status().applications


def test_deleted_app_raises_unavailable_and_fails_queued_calls(serve_instance) -> None:
    handle = serve.run(Slow.options(num_replicas=1).bind(), name="doomed", route_prefix="/doomed")
    busy = handle.remote(0.5)
    deadline = time.monotonic() + 10
    while serve.status().applications["doomed"].deployments["Slow"].ongoing_requests < 1:
        assert time.monotonic() < deadline, "the first request never started"
        time.sleep(0.01)
    queued = [handle.remote(0.01) for _ in range(3)]
    serve.delete("doomed")
    assert "doomed" not in serve.status().applications
    with pytest.raises(DeploymentUnavailableError):
        handle.remote(0.01).result(timeout_s=10)
    # The request that was running finishes; the ones still queued fail clearly.
    assert isinstance(busy.result(timeout_s=10), int)
    for r in queued:
        with pytest.raises(DeploymentUnavailableError):
            r.result(timeout_s=10)


def test_status_shape(serve_instance) -> None:
    serve.run(Version.bind("s"), name="stat", route_prefix="/stat")
    app = serve.status().applications["stat"]
    assert app.status == "RUNNING"
    assert app.route_prefix == "/stat"
    dep = app.deployments["Version"]
    assert dep.status == "HEALTHY"
    assert dep.replica_states == {"RUNNING": 1}
    assert dep.queued_requests == 0 and dep.ongoing_requests == 0


def test_result_keys_do_not_pile_up(serve_instance) -> None:
    handle = serve.run(Version.bind("k"), name="keys", route_prefix="/keys")
    for _ in range(50):
        handle.remote().result()
    keys = serve_instance.keys
    deadline = time.monotonic() + 10
    left = list(serve_instance.redis.scan_iter(match=keys.result("*")))
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = list(serve_instance.redis.scan_iter(match=keys.result("*")))
    assert left == []


@serve.deployment(user_config={"greeting": "Hello"})
class Configurable:
    def __init__(self) -> None:
        self.calls = 0

    def reconfigure(self, config: dict) -> None:
        self.greeting = config["greeting"]
        self.calls += 1

    def __call__(self) -> tuple:
        return (self.greeting, os.getpid(), self.calls)


def test_new_user_config_reconfigures_without_restart(serve_instance) -> None:
    # Given a replica that got its user_config before the first request
    handle = serve.run(Configurable.bind(), name="conf", route_prefix="/conf")
    greeting, pid, calls = handle.remote().result()
    assert (greeting, calls) == ("Hello", 1)
    # When the same app is deployed again with only a new user_config
    handle = serve.run(Configurable.options(user_config={"greeting": "Hola"}).bind(), name="conf",
                       route_prefix="/conf")
    # Then the same process answers, reconfigured
    assert handle.remote().result() == ("Hola", pid, 2)


def test_upgrade_under_load_fails_no_call(serve_instance) -> None:
    handle = serve.run(Version.options(num_replicas=2).bind("old"), name="live", route_prefix="/live")
    results: list = []
    failures: list = []
    stop = threading.Event()

    def load() -> None:
        # Given a steady stream of calls (about 100/s)
        while not stop.is_set():
            try:
                results.append(handle.remote().result(timeout_s=30))
            except Exception as e:  # noqa: BLE001 - any failure fails the test
                failures.append(e)
            time.sleep(0.01)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while len(results) < 20:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # When the app is upgraded in place
        serve.run(Version.options(num_replicas=2).bind("new"), name="live", route_prefix="/live")
        seen = len(results)
        while len(results) < seen + 20:
            assert time.monotonic() < deadline + 20
            time.sleep(0.01)
    finally:
        stop.set()
        worker.join()
    # Then no call failed, and after the upgrade only the new code answers
    assert failures == []
    assert set(results[seen:]) == {"new"}
    assert "old" in results and "new" in results


@serve.deployment
class SlowAsync:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    async def __call__(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return self.tag


def test_a_retired_replica_finishes_its_running_async_requests(serve_instance) -> None:
    handle = serve.run(SlowAsync.bind("old"), name="drain", route_prefix="/drain")
    assert handle.remote(0).result() == "old"
    # Given a slow async request running on the old replica
    running = handle.remote(1.0)
    deadline = time.monotonic() + 10
    while serve.status().applications["drain"].deployments["SlowAsync"].ongoing_requests < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # When new code is deployed and the old replica retires
    handle = serve.run(SlowAsync.bind("new"), name="drain", route_prefix="/drain")
    # Then the running request still completes, on the old code
    assert running.result(timeout_s=20) == "old"
    assert handle.remote(0).result() == "new"


@serve.deployment(graceful_shutdown_timeout_s=0.5)
class Deaf:
    """The "old" one ignores SIGTERM, as a replica stuck in native code would: only a kill stops it."""

    def __init__(self, tag: str) -> None:
        if tag == "old":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.tag = tag

    def __call__(self) -> tuple:
        return (self.tag, os.getpid())


def test_a_replica_that_will_not_stop_is_killed_after_its_own_graceful_shutdown_timeout(serve_instance) -> None:
    handle = serve.run(Deaf.bind("old"), name="deaf", route_prefix="/deaf")
    _, pid = handle.remote().result()
    # When new code is deployed and the old replica ignores the order to stop
    start = time.monotonic()
    handle = serve.run(Deaf.bind("new"), name="deaf", route_prefix="/deaf")  # returns once it is gone
    # Then its node kills it after the deployment's graceful_shutdown_timeout_s (plus
    # KILL_GRACE_S), not after the default 20 s: the node uses the deployment's own value
    poll(lambda: not _alive(pid), timeout_s=15, what="the old replica to be killed")
    assert time.monotonic() - start < 0.5 + KILL_GRACE_S + 5
    assert handle.remote().result()[0] == "new"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_deleted_app_is_deleting_while_its_replicas_drain(serve_instance) -> None:
    handle = serve.run(Slow.options(num_replicas=1).bind(), name="leaving", route_prefix="/leaving")
    busy = handle.remote(2.0)
    poll(lambda: serve.status().applications["leaving"].deployments["Slow"].ongoing_requests == 1,
         timeout_s=10, what="the request to start")
    # When the app is deleted while a request runs
    serve.delete("leaving", _blocking=False)
    # Then serve.status() lists it as DELETING (as Ray does) until its replica has drained
    app = serve.status().applications.get("leaving")
    assert app is not None and app.status == "DELETING", app
    assert app.deployments["Slow"].status == "UPDATING" and "stopping" in app.deployments["Slow"].message
    assert isinstance(busy.result(timeout_s=30), int)
    poll(lambda: "leaving" not in serve.status().applications, timeout_s=30, what="the deletion to finish")
    poll(lambda: "leaving" not in serve_instance.deleting(), timeout_s=10, what="the controller to forget it")
