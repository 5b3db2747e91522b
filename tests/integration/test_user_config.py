"""``user_config`` as in Ray Serve: ``reconfigure`` runs before the first request and on
every change, on every replica; a deployment that cannot take one fails at ``serve.run``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from actors import serve
from actors.exceptions import RayServeException


@serve.deployment(num_replicas=3, user_config={"v": 1})
class Logged:
    """Each reconfigure appends "pid value" to a file, so the test sees every replica's."""

    def __init__(self, log: str) -> None:
        self.log = log
        self.value = None

    def reconfigure(self, config: dict) -> None:
        self.value = config["v"]
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {config['v']}\n")

    def __call__(self) -> tuple[int, int]:
        return os.getpid(), self.value


def _latest_by_pid(log: Path) -> dict[int, int]:
    latest: dict[int, int] = {}
    for line in log.read_text().splitlines():
        pid, value = line.split()
        latest[int(pid)] = int(value)
    return latest


def test_a_new_user_config_reaches_every_replica(serve_instance, tmp_path: Path) -> None:
    log = tmp_path / "reconfigured.log"
    # Given three replicas, each configured with v=1 when it started
    serve.run(Logged.bind(str(log)), name="cfg-all", route_prefix="/cfg-all")
    first = _latest_by_pid(log)
    assert list(first.values()) == [1, 1, 1]
    # When only the user_config changes
    handle = serve.run(Logged.options(user_config={"v": 2}).bind(str(log)), name="cfg-all",
                       route_prefix="/cfg-all")
    # Then serve.run returned once every one of the same three processes has v=2
    assert _latest_by_pid(log) == {pid: 2 for pid in first}
    assert {handle.remote().result()[1] for _ in range(30)} == {2}
    serve.delete("cfg-all")


@serve.deployment(user_config={"threshold": 0.5})
class AsyncConfigured:
    """reconfigure is async and yields to the loop before it sets anything."""

    def __init__(self) -> None:
        self.threshold: float | None = None

    async def reconfigure(self, config: dict) -> None:
        await asyncio.sleep(0)
        self.threshold = config["threshold"]

    async def __call__(self) -> float | None:
        return self.threshold


@serve.deployment(num_replicas=2, user_config={"threshold": 0.25})
class SyncConfigured:
    def __init__(self) -> None:
        self.threshold: float | None = None

    def reconfigure(self, config: dict) -> None:
        self.threshold = config["threshold"]

    def __call__(self) -> float | None:
        return self.threshold


@pytest.mark.parametrize("deployment, expected", [(AsyncConfigured, 0.5), (SyncConfigured, 0.25)])
def test_reconfigure_runs_before_the_first_request(serve_instance, deployment, expected) -> None:
    # Given requests sent at once, before any could have run
    handle = serve.run(deployment.bind(), name="cfg-first", route_prefix="/cfg-first")
    responses = [handle.remote() for _ in range(20)]
    # Then every one of them saw the user_config
    assert {r.result() for r in responses} == {expected}
    serve.delete("cfg-first")


@serve.deployment(user_config={"threshold": 0.5})
class NoReconfigure:
    def __call__(self) -> str:
        return "ok"


@serve.deployment(user_config={"threshold": 0.5})
def function_with_user_config() -> str:
    return "ok"


def test_user_config_without_reconfigure_fails_serve_run(serve_instance) -> None:
    # As in Ray: a RayServeException saying the reconfigure method is missing
    with pytest.raises(RayServeException,
                       match="user_config specified but deployment NoReconfigure missing reconfigure method"):
        serve.run(NoReconfigure.bind(), name="no-reconf", route_prefix="/no-reconf")
    assert "no-reconf" not in serve.status().applications
    # A config given through .options() is checked the same way
    plain = NoReconfigure.options(user_config=None)
    with pytest.raises(RayServeException, match="missing reconfigure method"):
        serve.run(plain.options(user_config={"x": 1}).bind(), name="no-reconf", route_prefix="/no-reconf")


def test_user_config_on_a_function_fails_serve_run(serve_instance) -> None:
    # As in Ray: a ValueError, since only a class can have reconfigure
    with pytest.raises(ValueError, match="deployment_def must be a class to use user_config"):
        serve.run(function_with_user_config.bind(), name="fn-conf", route_prefix="/fn-conf")
    assert "fn-conf" not in serve.status().applications


def test_removing_the_user_config_keeps_the_deployment_serving(serve_instance) -> None:
    handle = serve.run(SyncConfigured.options(num_replicas=1).bind(), name="cfg-none", route_prefix="/cfg-none")
    assert handle.remote().result() == 0.25
    # When the user_config is removed, reconfigure is not called (as in Ray), and nothing fails
    handle = serve.run(SyncConfigured.options(num_replicas=1, user_config=None).bind(), name="cfg-none",
                       route_prefix="/cfg-none")
    assert handle.remote().result() == 0.25
    serve.delete("cfg-none")
