"""Replicas that fail their health checks, or die, are replaced."""

from __future__ import annotations

import os
import signal
import time

from actors import serve


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
    second = _wait_for_new_pid(handle, first, "failed health checks")
    assert second != first
    # The replacement is healthy and stays.
    assert handle.remote().result() == second
    status = serve.status().applications["fragile"].deployments["Fragile"]
    deadline = time.monotonic() + 10
    while status.replica_states != {"RUNNING": 1}:
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
        status = serve.status().applications["fragile"].deployments["Fragile"]


def test_a_killed_replica_is_replaced(serve_instance) -> None:
    handle = serve.run(Fragile.bind(), name="killed", route_prefix="/killed")
    first = handle.remote().result()
    os.kill(first, signal.SIGKILL)
    assert _wait_for_new_pid(handle, first, "SIGKILL") != first
