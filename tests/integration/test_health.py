"""Replicas that fail their health checks, or die, are replaced."""

from __future__ import annotations

import os
import signal
import time

from actors import serve
from tests.cluster import poll


@serve.deployment(health_check_period_s=0.1, health_check_timeout_s=1)
class Fragile:
    def __init__(self) -> None:
        self.healthy = True

    def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("lost the model")

    def break_it(self) -> None:
        self.healthy = False

    def __call__(self) -> int:
        return os.getpid()


def _wait_for_new_pid(handle, old: int, what: str) -> int:
    deadline = time.monotonic() + 20
    while True:
        assert time.monotonic() < deadline, f"no replacement replica after {what}"
        try:
            pid = handle.remote().result(timeout_s=2)
        except Exception:
            pid = old
        if pid != old:
            return pid
        time.sleep(0.05)


def test_a_replica_failing_its_health_checks_is_replaced(serve_instance) -> None:
    handle = serve.run(Fragile.bind(), name="fragile", route_prefix="/fragile")
    first = handle.remote().result()
    handle.break_it.remote().result()
    # Until it is replaced, the deployment and its app are UNHEALTHY, as in Ray
    app = poll(lambda: (a := serve.status().applications["fragile"]).status == "UNHEALTHY" and a,
               timeout_s=20, what="the app to be UNHEALTHY")
    assert app.deployments["Fragile"].status == "UNHEALTHY"
    assert "check_health raised RuntimeError: lost the model" in app.deployments["Fragile"].message
    assert "Fragile" in app.message
    second = _wait_for_new_pid(handle, first, "failed health checks")
    assert second != first
    # The replacement is healthy and stays.
    assert handle.remote().result() == second
    poll(lambda: serve.status().applications["fragile"].status == "RUNNING", timeout_s=10,
         what="the app to be RUNNING again")
    status = serve.status().applications["fragile"].deployments["Fragile"]
    assert (status.status, status.replica_states) == ("HEALTHY", {"RUNNING": 1})


def test_a_killed_replica_is_replaced(serve_instance) -> None:
    handle = serve.run(Fragile.bind(), name="killed", route_prefix="/killed")
    first = handle.remote().result()
    os.kill(first, signal.SIGKILL)
    assert _wait_for_new_pid(handle, first, "SIGKILL") != first


@serve.deployment
class Victim:
    def __call__(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    def pid(self) -> int:
        return os.getpid()

    def count(self, n: int):
        for i in range(n):
            yield i
            time.sleep(0.05)


def test_requests_of_a_killed_replica_fail_instead_of_hanging(serve_instance) -> None:
    import pytest

    from actors.exceptions import ReplicaDiedError

    handle = serve.run(Victim.bind(), name="victim", route_prefix="/victim")
    pid = handle.pid.remote().result()
    # Given a unary and a streamed request running on the replica
    slow = handle.remote(30)
    stream = handle.options(stream=True, method_name="count").remote(10_000)
    assert next(stream) == 0
    deadline = time.monotonic() + 10
    while serve.status().applications["victim"].deployments["Victim"].ongoing_requests < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # When the replica is killed
    os.kill(pid, signal.SIGKILL)
    # Then both callers get a clear error within seconds, and a new replica serves
    with pytest.raises(ReplicaDiedError, match="died"):
        slow.result(timeout_s=15)
    with pytest.raises(ReplicaDiedError):
        for _ in stream:
            pass
    assert handle.remote(0).result(timeout_s=20) != pid
