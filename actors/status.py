"""``serve.status()`` in Ray Serve's shape, plus queue depth and in-flight counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from broker.registry import Registry

from .config import DeploymentConfig

#: States of replica records whose process ended (or is ending) without serving again:
#: kept to say why (a constructor error; failed health checks) until they are replaced.
ENDED_STATES = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})


@dataclass
class DeploymentStatusOverview:
    """One deployment: ``status`` is HEALTHY, UPDATING, UNHEALTHY or DEPLOY_FAILED."""

    status: str
    message: str = ""
    replica_states: dict[str, int] = field(default_factory=dict)
    target_replicas: int = 0
    #: Requests waiting in the deployment's queue.
    queued_requests: int = 0
    #: Requests replicas have taken and not yet answered.
    ongoing_requests: int = 0
    #: Replicas per worker (node id -> count).
    replicas_per_worker: dict[str, int] = field(default_factory=dict)


@dataclass
class ApplicationStatusOverview:
    """One application: ``status`` is RUNNING, DEPLOYING, DEPLOY_FAILED, UNHEALTHY or DELETING."""

    status: str
    message: str = ""
    route_prefix: str | None = None
    ingress: str = ""
    deployments: dict[str, DeploymentStatusOverview] = field(default_factory=dict)


@dataclass
class ServeStatus:
    applications: dict[str, ApplicationStatusOverview] = field(default_factory=dict)
    #: Worker (node) records by id: host, pid, replicas, max_replicas, heartbeat_age_s.
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Gateway records by id: host, port, pid, heartbeat_age_s.
    gateways: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Who runs the controller now.
    controller: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_status(registry: Registry) -> ServeStatus:
    """Read every application's state from the registry."""
    out = ServeStatus(workers=registry.nodes(), gateways=registry.gateways(), controller=registry.leader())
    scaled = registry.scale_states()
    for name, record in registry.apps().items():
        deps = record["deployments"]
        configs = registry.deployment_configs(name, deps)
        records = registry.replica_sets(name, deps)
        load = registry.load(name, deps, {d: list(records[d]) for d in deps})
        statuses = {}
        for dep in deps:
            if dep in configs:
                version, config = configs[dep]
                target = DeploymentConfig(**config).target_replicas
                if config.get("autoscaling_config") and (name, dep) in scaled:
                    target = int(scaled[(name, dep)]["target"])
                statuses[dep] = deployment_status(version, target, records[dep], load[dep])
        status, message = application_status(statuses)
        out.applications[name] = ApplicationStatusOverview(status, message, record.get("route_prefix"),
                                                           record.get("ingress", ""), statuses)
    for name, record in registry.deleting().items():
        if name not in out.applications:
            deleting = deleting_status(record, registry.replica_sets(name, record["deployments"]))
            if deleting is not None:
                out.applications[name] = deleting
    return out


def stopping(records: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """The replica records (by deployment) of a deleted app whose processes still drain."""
    return {dep: recs for dep, recs in records.items()
            if any(r.get("state") not in ENDED_STATES for r in recs.values())}


def deleting_status(record: dict[str, Any], records: dict[str, dict[str, dict[str, Any]]]
                    ) -> ApplicationStatusOverview | None:
    """A deleted app whose replicas are still draining, as Ray lists it: DELETING; None
    once they have all stopped."""
    draining = stopping(records)
    if not draining:
        return None
    deployments = {dep: replace(deployment_status("", 0, recs, {}), status="UPDATING",
                                message=f"deleting: {len(recs)} replica(s) stopping")
                   for dep, recs in draining.items()}
    return ApplicationStatusOverview("DELETING", "", record.get("route_prefix"), record.get("ingress", ""),
                                     deployments)


def deployment_status(version: str, target: int, records: dict[str, dict[str, Any]],
                      load: dict[str, int]) -> DeploymentStatusOverview:
    states: dict[str, int] = {}
    per_worker: dict[str, int] = {}
    for rec in records.values():
        states[rec.get("state", "UNKNOWN")] = states.get(rec.get("state", "UNKNOWN"), 0) + 1
        per_worker[rec.get("node", "?")] = per_worker.get(rec.get("node", "?"), 0) + 1
    current = [r for r in records.values() if r.get("version") == version]
    failed = [r for r in current if r.get("state") == "DEPLOY_FAILED"]
    unhealthy = [r for r in current if r.get("state") == "UNHEALTHY"]
    running = sum(1 for r in current if r.get("state") == "RUNNING")
    if failed:
        status, message = "DEPLOY_FAILED", failed[0].get("message", "")
    elif unhealthy:  # as in Ray: from a failed health check until the replacement runs
        status, message = "UNHEALTHY", unhealthy[0].get("message", "")
    elif running >= target and len(records) == running:
        status, message = "HEALTHY", ""
    else:
        status, message = "UPDATING", f"{running} of {target} replicas running"
    return DeploymentStatusOverview(status, message, states, target, load.get("queued", 0), load.get("ongoing", 0),
                                    per_worker)


def application_status(deployments: dict[str, DeploymentStatusOverview]) -> tuple[str, str]:
    failed = {n: d for n, d in deployments.items() if d.status == "DEPLOY_FAILED"}
    if failed:
        name, dep = next(iter(failed.items()))
        return "DEPLOY_FAILED", f"Deployment '{name}' failed to start:\n{dep.message}"
    unhealthy = {n: d for n, d in deployments.items() if d.status == "UNHEALTHY"}
    if unhealthy:
        name, dep = next(iter(unhealthy.items()))
        return "UNHEALTHY", f"Deployment '{name}' is unhealthy: {dep.message}"
    if all(d.status == "HEALTHY" for d in deployments.values()):
        return "RUNNING", ""
    return "DEPLOYING", ""
