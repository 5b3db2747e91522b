"""How a status is derived from replica records, without any process."""

from __future__ import annotations

import json

import pytest

from actors.status import (
    ApplicationStatus,
    DeploymentStatus,
    DeploymentStatusOverview,
    DeploymentStatusTrigger,
    ProxyStatus,
    ServeStatus,
    application_status,
    deleting_status,
    deployment_status,
    proxy_status,
)


def _replicas(*states: str, version: str = "v1", tag: str = "t1") -> dict[str, dict]:
    return {f"r{i}": {"state": s, "version": version, "user_config_tag": tag, "node": "w"}
            for i, s in enumerate(states)}


def _status(records: dict, target: int, **kw) -> tuple[str, str]:
    overview = deployment_status("v1", target, records, {}, tag="t1", **kw)
    return overview.status, overview.status_trigger


def test_statuses_are_strings_printed_as_their_names() -> None:
    assert ApplicationStatus.RUNNING == "RUNNING" and f"{ApplicationStatus.RUNNING}" == "RUNNING"
    assert str(DeploymentStatusTrigger.AUTOSCALING) == "AUTOSCALING"
    assert f"{DeploymentStatus.HEALTHY:<9}|" == "HEALTHY  |"
    assert json.loads(json.dumps(ServeStatus(proxies={"g": ProxyStatus.HEALTHY}).to_dict()))["proxies"] == {
        "g": "HEALTHY"}


@pytest.mark.parametrize("records, target, kw, expected", [
    # A first deploy, and its end
    (_replicas("STARTING"), 1, {}, ("UPDATING", "CONFIG_UPDATE_STARTED")),
    (_replicas("RUNNING"), 1, {}, ("HEALTHY", "CONFIG_UPDATE_COMPLETED")),
    # An upgrade: an old replica still runs beside the new one
    ({**_replicas("RUNNING", version="v0"), "n": _replicas("RUNNING")["r0"]}, 1, {},
     ("UPDATING", "CONFIG_UPDATE_STARTED")),
    # A new user_config that a replica has not applied yet
    ({**_replicas("RUNNING"), "x": _replicas("RUNNING", tag="t0")["r0"]}, 2, {},
     ("UPDATING", "CONFIG_UPDATE_STARTED")),
    # The autoscaler's moves, under way and done
    (_replicas("RUNNING", "STARTING"), 2, {"scale": {"target": 2, "from": 1}}, ("UPSCALING", "AUTOSCALING")),
    (_replicas("RUNNING", "STOPPING"), 1, {"scale": {"target": 1, "from": 2}}, ("DOWNSCALING", "AUTOSCALING")),
    (_replicas("RUNNING", "RUNNING"), 2, {"scale": {"target": 2, "from": 1}}, ("HEALTHY", "UPSCALE_COMPLETED")),
    ({}, 0, {"scale": {"target": 0, "from": 1}}, ("HEALTHY", "DOWNSCALE_COMPLETED")),
    # The autoscaler's first target for a version is the deploy's, not a move
    (_replicas("STARTING"), 1, {"scale": {"target": 1}}, ("UPDATING", "CONFIG_UPDATE_STARTED")),
    # Failures
    (_replicas("DEPLOY_FAILED"), 1, {}, ("DEPLOY_FAILED", "REPLICA_STARTUP_FAILED")),
    (_replicas("UNHEALTHY", "STARTING"), 1, {}, ("UNHEALTHY", "HEALTH_CHECK_FAILED")),
])
def test_deployment_status_and_trigger(records: dict, target: int, kw: dict, expected: tuple[str, str]) -> None:
    assert _status(records, target, **kw) == expected


def test_application_status_ranks_as_ray() -> None:
    def dep(status: DeploymentStatus) -> DeploymentStatusOverview:
        return DeploymentStatusOverview(status, message="why")

    assert application_status({"a": dep(DeploymentStatus.HEALTHY), "b": dep(DeploymentStatus.UPSCALING)}) == (
        "RUNNING", "")
    assert application_status({"a": dep(DeploymentStatus.HEALTHY), "b": dep(DeploymentStatus.UPDATING)})[0] == \
        "DEPLOYING"
    assert application_status({"a": dep(DeploymentStatus.UNHEALTHY), "b": dep(DeploymentStatus.UPDATING)})[0] == \
        "UNHEALTHY"
    failed = application_status({"a": dep(DeploymentStatus.UNHEALTHY), "b": dep(DeploymentStatus.DEPLOY_FAILED)})
    assert failed[0] == "DEPLOY_FAILED" and "'b'" in failed[1]


def test_a_deleted_app_is_deleting_until_its_replicas_stopped() -> None:
    record = {"name": "x", "deployments": ["D"], "route_prefix": "/x", "last_deployed_time_s": 12.5}
    app = deleting_status(record, {"D": _replicas("STOPPING")})
    assert app is not None and (app.status, app.last_deployed_time_s) == ("DELETING", 12.5)
    assert (app.deployments["D"].status, app.deployments["D"].status_trigger) == ("UPDATING", "DELETING")
    assert deleting_status(record, {"D": {}}) is None


def test_a_proxy_is_healthy_while_its_gateway_heartbeats() -> None:
    assert proxy_status({"heartbeat_age_s": 0.4}) == ProxyStatus.HEALTHY
    assert proxy_status({"heartbeat_age_s": None}) == ProxyStatus.UNHEALTHY
