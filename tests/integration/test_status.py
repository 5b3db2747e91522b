"""``serve.status()`` in Ray Serve's shape, with mqserve's own fields kept."""

from __future__ import annotations

import json
import os
import textwrap
import threading
import time
from dataclasses import fields
from pathlib import Path

import pytest

from actors import serve
from actors.runtime.cli import format_status
from actors.status import (
    ApplicationStatus,
    ApplicationStatusOverview,
    DeploymentStatus,
    DeploymentStatusOverview,
    DeploymentStatusTrigger,
    ProxyStatus,
    ServeStatus,
)
from tests.cluster import poll
from tests.conftest import run_python


@serve.deployment
class Plain:
    def __call__(self) -> str:
        return "ok"


@serve.deployment
class Gated:
    """Its constructor waits (with a deadline) until the test opens the gate file."""

    def __init__(self, gate: str) -> None:
        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)

    def __call__(self) -> str:
        return "ok"


@serve.deployment
class Broken:
    def __init__(self) -> None:
        raise RuntimeError("no weights")


def test_the_fields_are_rays_in_rays_order() -> None:
    assert [f.name for f in fields(ServeStatus)][:3] == ["proxies", "applications", "target_capacity"]
    assert [f.name for f in fields(ApplicationStatusOverview)][:4] == [
        "status", "message", "last_deployed_time_s", "deployments"]
    assert [f.name for f in fields(DeploymentStatusOverview)][:4] == [
        "status", "status_trigger", "replica_states", "message"]
    empty = ServeStatus()
    assert (empty.proxies, empty.applications, empty.target_capacity) == ({}, {}, None)


def test_a_running_app_in_rays_shape(serve_instance) -> None:
    before = time.time()
    serve.run(Plain.bind(), name="shape", route_prefix="/shape")
    after = time.time()
    status = serve.status()
    # Top level: one proxy per gateway, no target capacity set
    assert status.proxies and set(status.proxies.values()) == {ProxyStatus.HEALTHY}
    assert set(status.proxies) == set(status.gateways)
    assert status.target_capacity is None
    # The application
    app = status.applications["shape"]
    assert app.status == ApplicationStatus.RUNNING == "RUNNING"
    assert app.message == ""
    assert before - 2 <= app.last_deployed_time_s <= after + 2  # Redis's clock, on this machine
    # Its deployment
    dep = app.deployments["Plain"]
    assert dep.status == DeploymentStatus.HEALTHY
    assert dep.status_trigger == DeploymentStatusTrigger.CONFIG_UPDATE_COMPLETED
    assert dep.replica_states == {"RUNNING": 1}
    assert dep.message == ""
    # mqserve's own fields are still there, for `mqserve status`
    assert app.route_prefix == "/shape" and dep.target_replicas == 1 and dep.queued_requests == 0
    assert status.workers and status.controller
    assert "shape" in format_status(status) and "RUNNING" in format_status(status)
    as_json = json.loads(json.dumps(status.to_dict()))
    assert as_json["applications"]["shape"]["deployments"]["Plain"]["status_trigger"] == "CONFIG_UPDATE_COMPLETED"
    assert as_json["target_capacity"] is None
    # A redeploy moves last_deployed_time_s
    serve.run(Plain.options(num_replicas=2).bind(), name="shape", route_prefix="/shape")
    assert serve.status().applications["shape"].last_deployed_time_s >= app.last_deployed_time_s
    serve.delete("shape")


def test_a_deploy_in_progress_is_updating_with_config_update_started(serve_instance, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    deploying = threading.Thread(target=serve.run, args=(Gated.bind(str(gate)),),
                                 kwargs={"name": "gated", "route_prefix": "/gated"})
    deploying.start()
    try:
        app = poll(lambda: serve.status().applications.get("gated"), what="the app to be registered")
        assert app.status == ApplicationStatus.DEPLOYING
        dep = app.deployments["Gated"]
        assert (dep.status, dep.status_trigger) == ("UPDATING", "CONFIG_UPDATE_STARTED")
    finally:
        gate.touch()
        deploying.join(timeout=60)
    dep = serve.status().applications["gated"].deployments["Gated"]
    assert (dep.status, dep.status_trigger) == ("HEALTHY", "CONFIG_UPDATE_COMPLETED")
    serve.delete("gated")


def test_a_failed_deploy_says_replica_startup_failed(serve_instance) -> None:
    with pytest.raises(RuntimeError, match="no weights"):
        serve.run(Broken.bind(), name="broken-status", route_prefix="/broken-status")
    app = serve.status().applications["broken-status"]
    assert app.status == ApplicationStatus.DEPLOY_FAILED
    dep = app.deployments["Broken"]
    assert (dep.status, dep.status_trigger) == ("DEPLOY_FAILED", "REPLICA_STARTUP_FAILED")
    assert "no weights" in dep.message
    serve.delete("broken-status")


EMPTY = textwrap.dedent("""
    import json, os
    from actors import serve
    from actors.runtime import context

    status = serve.status()
    children = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[1] == str(os.getpid()):
                    children.append(pid)
        except OSError:
            pass
    print(json.dumps({"applications": status.applications, "proxies": status.proxies,
                      "target_capacity": status.target_capacity, "children": children,
                      "connected": context.current_context() is not None}))
""")


def test_status_before_anything_runs_is_empty_and_starts_nothing() -> None:
    # Local mode (no Redis configured), in a process that never called serve.run
    done = run_python(EMPTY, env={"MQSERVE_REDIS_URL": ""})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"applications": {}, "proxies": {}, "target_capacity": None,
                                       "children": [], "connected": False}


LISTS = textwrap.dedent("""
    import json
    from actors import serve

    status = serve.status()
    print(json.dumps({name: app.status for name, app in status.applications.items()}))
""")


def test_status_in_another_process_reads_the_cluster(serve_instance, redis_url: str, namespace: str) -> None:
    serve.run(Plain.bind(), name="seen", route_prefix="/seen")
    # A process that only has MQSERVE_REDIS_URL sees the cluster's apps, as a Ray driver
    # sees the cluster's, and starts nothing
    done = run_python(LISTS, env={"MQSERVE_REDIS_URL": redis_url, "MQSERVE_NAMESPACE": namespace})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["seen"] == "RUNNING"
    # And nothing in another namespace
    done = run_python(LISTS, env={"MQSERVE_REDIS_URL": redis_url, "MQSERVE_NAMESPACE": f"{namespace}-empty"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {}
    serve.delete("seen")
