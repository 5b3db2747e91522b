"""``serve.status()`` in Ray Serve's shape (``ray.serve.schema``), plus mqserve's own
fields: queue depth and in-flight counts, workers, gateways and the controller.

Nothing here is remembered between calls: every status is derived from the records in
Redis (replicas, deployments, the autoscaler's state), so any process that reaches the
cluster's Redis reads the same status.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from broker.registry import Registry

from .config import DeploymentConfig, EncodingType, LoggingConfig, user_config_tag
from .context import ReplicaRank

# ``ray.serve.schema`` also holds the logging config and replica ranks: the same names here.
__all__ = [
    "ApplicationStatus", "ApplicationStatusOverview", "DeploymentStatus", "DeploymentStatusOverview",
    "DeploymentStatusTrigger", "EncodingType", "LoggingConfig", "ProxyStatus", "ReplicaRank", "ReplicaState",
    "ServeStatus", "collect_status",
]

#: States of replica records whose process ended (or is ending) without serving again:
#: kept to say why (a constructor error; failed health checks) until they are replaced.
ENDED_STATES = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})


class _Named(str, Enum):
    """A status name: equal to its string (``status == "RUNNING"``) as Ray's are, and
    printed as it (``f"{status}"`` is ``RUNNING``, on every Python version)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return str(self.value).__format__(spec)


class ApplicationStatus(_Named):
    NOT_STARTED = "NOT_STARTED"
    DEPLOYING = "DEPLOYING"
    DEPLOY_FAILED = "DEPLOY_FAILED"
    RUNNING = "RUNNING"
    UNHEALTHY = "UNHEALTHY"
    DELETING = "DELETING"


class DeploymentStatus(_Named):
    UPDATING = "UPDATING"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    DEPLOY_FAILED = "DEPLOY_FAILED"
    UPSCALING = "UPSCALING"
    DOWNSCALING = "DOWNSCALING"


class DeploymentStatusTrigger(_Named):
    """How a deployment reached its status."""

    UNSPECIFIED = "UNSPECIFIED"
    CONFIG_UPDATE_STARTED = "CONFIG_UPDATE_STARTED"
    CONFIG_UPDATE_COMPLETED = "CONFIG_UPDATE_COMPLETED"
    UPSCALE_COMPLETED = "UPSCALE_COMPLETED"
    DOWNSCALE_COMPLETED = "DOWNSCALE_COMPLETED"
    AUTOSCALING = "AUTOSCALING"
    REPLICA_STARTUP_FAILED = "REPLICA_STARTUP_FAILED"
    HEALTH_CHECK_FAILED = "HEALTH_CHECK_FAILED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    DELETING = "DELETING"


class ReplicaState(_Named):
    """Ray's replica states (the keys of ``replica_states``); mqserve also counts the
    replicas that ended, as DEPLOY_FAILED or UNHEALTHY, until they are replaced."""

    STARTING = "STARTING"
    UPDATING = "UPDATING"
    RECOVERING = "RECOVERING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    PENDING_MIGRATION = "PENDING_MIGRATION"


class ProxyStatus(_Named):
    """A gateway's status: mqserve's gateways are Ray's proxies."""

    STARTING = "STARTING"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    DRAINING = "DRAINING"
    DRAINED = "DRAINED"


@dataclass
class DeploymentStatusOverview:
    """One deployment; Ray's fields first (``status``, ``status_trigger``,
    ``replica_states``, ``message``), then mqserve's."""

    status: DeploymentStatus
    status_trigger: DeploymentStatusTrigger = DeploymentStatusTrigger.UNSPECIFIED
    #: Replicas per state name (see :class:`ReplicaState`).
    replica_states: dict[str, int] = field(default_factory=dict)
    message: str = ""
    target_replicas: int = 0
    #: Requests waiting in the deployment's queue.
    queued_requests: int = 0
    #: Requests replicas have taken and not yet answered.
    ongoing_requests: int = 0
    #: Replicas per worker (node id -> count).
    replicas_per_worker: dict[str, int] = field(default_factory=dict)
    #: The models each replica holds (replica id -> model ids, named as Ray's replicas
    #: report them), for the replicas of a ``@serve.multiplexed`` deployment holding any:
    #: loaded, loading, or just sent requests for.
    multiplexed_model_ids: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class ApplicationStatusOverview:
    """One application; Ray's fields first, then mqserve's (``route_prefix``, ``ingress``)."""

    status: ApplicationStatus
    message: str = ""
    #: When the application was last deployed (``serve.run``), a Unix time in seconds.
    last_deployed_time_s: float = 0.0
    deployments: dict[str, DeploymentStatusOverview] = field(default_factory=dict)
    route_prefix: str | None = None
    ingress: str = ""


@dataclass
class ServeStatus:
    """What ``serve.status()`` returns; Ray's fields first, then mqserve's."""

    #: Gateways (Ray's proxies) by id.
    proxies: dict[str, ProxyStatus] = field(default_factory=dict)
    applications: dict[str, ApplicationStatusOverview] = field(default_factory=dict)
    #: Ray's target capacity (a percentage); mqserve has none to set: always None.
    target_capacity: float | None = None
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
    gateways = registry.gateways()
    out = ServeStatus(proxies={gid: proxy_status(rec) for gid, rec in gateways.items()},
                      workers=registry.nodes(), gateways=gateways, controller=registry.leader())
    scaled = registry.scale_states()
    for name, record in registry.apps().items():
        deps = record["deployments"]
        configs = registry.deployment_configs(name, deps)
        records = registry.replica_sets(name, deps)
        load = registry.load(name, deps, {d: list(records[d]) for d in deps})
        models = registry.models_held(rid for d in deps for rid in records[d])
        statuses = {}
        for dep in deps:
            if dep in configs:
                version, config = configs[dep]
                target = DeploymentConfig(**config).target_replicas
                scale = scaled.get((name, dep)) if config.get("autoscaling_config") else None
                if scale is not None:
                    target = int(scale["target"])
                statuses[dep] = deployment_status(version, target, records[dep], load[dep],
                                                  tag=user_config_tag(config.get("user_config")),
                                                  scale=scale if scale and scale.get("version") == version else None)
                statuses[dep].multiplexed_model_ids = {rid: models[rid] for rid in records[dep] if rid in models}
        status, message = application_status(statuses)
        out.applications[name] = ApplicationStatusOverview(
            status, message, float(record.get("last_deployed_time_s", 0.0)), statuses,
            record.get("route_prefix"), record.get("ingress", ""))
    for name, record in registry.deleting().items():
        if name not in out.applications:
            deleting = deleting_status(record, registry.replica_sets(name, record["deployments"]))
            if deleting is not None:
                out.applications[name] = deleting
    return out


def proxy_status(record: dict[str, Any]) -> ProxyStatus:
    """A gateway is HEALTHY while its alive key lives (it heartbeats), else UNHEALTHY."""
    return ProxyStatus.HEALTHY if record.get("heartbeat_age_s") is not None else ProxyStatus.UNHEALTHY


def stopping(records: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """The replica records (by deployment) of a deleted app whose processes still drain."""
    return {dep: recs for dep, recs in records.items()
            if any(r.get("state") not in ENDED_STATES for r in recs.values())}


def deleting_status(record: dict[str, Any], records: dict[str, dict[str, dict[str, Any]]]
                    ) -> ApplicationStatusOverview | None:
    """A deleted app whose replicas are still draining, as Ray lists it: DELETING, its
    deployments UPDATING for that reason; None once they have all stopped."""
    draining = stopping(records)
    if not draining:
        return None
    deployments = {}
    for dep, recs in draining.items():
        overview = deployment_status("", 0, recs, {})
        overview.status, overview.status_trigger = DeploymentStatus.UPDATING, DeploymentStatusTrigger.DELETING
        overview.message = f"deleting: {len(recs)} replica(s) stopping"
        deployments[dep] = overview
    return ApplicationStatusOverview(ApplicationStatus.DELETING, "", float(record.get("last_deployed_time_s", 0.0)),
                                     deployments, record.get("route_prefix"), record.get("ingress", ""))


def deployment_status(version: str, target: int, records: dict[str, dict[str, Any]], load: dict[str, int], *,
                      tag: str | None = None, scale: dict[str, Any] | None = None) -> DeploymentStatusOverview:
    """A deployment's status from its replica records: those of ``version`` (and, if
    ``tag`` is given, of that user_config) count as up to date. ``scale`` is the
    autoscaler's state for this version, whose ``from`` says it moved the target."""
    states: dict[str, int] = {}
    per_worker: dict[str, int] = {}
    for rec in records.values():
        states[rec.get("state", "UNKNOWN")] = states.get(rec.get("state", "UNKNOWN"), 0) + 1
        per_worker[rec.get("node", "?")] = per_worker.get(rec.get("node", "?"), 0) + 1
    current = [r for r in records.values() if r.get("version") == version]
    status, trigger, message = _status_of(current, target, records, tag, scale)
    return DeploymentStatusOverview(status, trigger, states, message, target, load.get("queued", 0),
                                    load.get("ongoing", 0), per_worker)


def _status_of(current: list[dict[str, Any]], target: int, records: dict[str, dict[str, Any]], tag: str | None,
               scale: dict[str, Any] | None) -> tuple[DeploymentStatus, DeploymentStatusTrigger, str]:
    failed = [r for r in current if r.get("state") == "DEPLOY_FAILED"]
    if failed:
        return DeploymentStatus.DEPLOY_FAILED, DeploymentStatusTrigger.REPLICA_STARTUP_FAILED, \
            failed[0].get("message", "")
    unhealthy = [r for r in current if r.get("state") == "UNHEALTHY"]
    if unhealthy:  # as in Ray: from a failed health check until the replacement runs
        return DeploymentStatus.UNHEALTHY, DeploymentStatusTrigger.HEALTH_CHECK_FAILED, \
            unhealthy[0].get("message", "")
    up_to_date = [r for r in current if tag is None or r.get("user_config_tag") == tag]
    running = sum(1 for r in up_to_date if r.get("state") == "RUNNING")
    moved_from = scale.get("from") if scale is not None else None
    if running == target and len(records) == running:
        if moved_from is None or moved_from == target:
            return DeploymentStatus.HEALTHY, DeploymentStatusTrigger.CONFIG_UPDATE_COMPLETED, ""
        done = DeploymentStatusTrigger.UPSCALE_COMPLETED if moved_from < target else \
            DeploymentStatusTrigger.DOWNSCALE_COMPLETED
        return DeploymentStatus.HEALTHY, done, ""
    message = f"{running} of {target} replicas running"
    if moved_from is not None and len(up_to_date) == len(records):  # only the autoscaler's doing
        scaling = DeploymentStatus.UPSCALING if running < target else DeploymentStatus.DOWNSCALING
        return scaling, DeploymentStatusTrigger.AUTOSCALING, message
    return DeploymentStatus.UPDATING, DeploymentStatusTrigger.CONFIG_UPDATE_STARTED, message


def application_status(deployments: dict[str, DeploymentStatusOverview]) -> tuple[ApplicationStatus, str]:
    """The application's status from its deployments', ranked as Ray ranks them: a failed
    deploy, then an unhealthy deployment, then one updating; autoscaling is RUNNING."""
    failed = {n: d for n, d in deployments.items() if d.status == DeploymentStatus.DEPLOY_FAILED}
    if failed:
        name, dep = next(iter(failed.items()))
        return ApplicationStatus.DEPLOY_FAILED, f"Deployment '{name}' failed to start:\n{dep.message}"
    unhealthy = {n: d for n, d in deployments.items() if d.status == DeploymentStatus.UNHEALTHY}
    if unhealthy:
        name, dep = next(iter(unhealthy.items()))
        return ApplicationStatus.UNHEALTHY, f"Deployment '{name}' is unhealthy: {dep.message}"
    serving = (DeploymentStatus.HEALTHY, DeploymentStatus.UPSCALING, DeploymentStatus.DOWNSCALING)
    if all(d.status in serving for d in deployments.values()):
        return ApplicationStatus.RUNNING, ""
    return ApplicationStatus.DEPLOYING, ""
