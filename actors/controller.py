"""The controller: makes the replicas that run match the applications registered.

It runs inside a node process that holds the controller lease in Redis (one at a time),
so there is no separate service to run. Each pass compares, per deployment, the
replicas assigned to nodes with the target count of the current version, and
assigns or unassigns replicas; nodes start and stop the processes.

Upgrades: replicas of an older version are unassigned once the new version has its
target count RUNNING, so an app keeps answering while it is redeployed.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from broker.registry import Registry

from .config import DeploymentConfig

logger = logging.getLogger("mqserve.controller")

#: Seconds without a heartbeat after which a node counts as dead.
NODE_DEAD_AFTER_S = 15.0


@dataclass
class _Assigned:
    node: str
    replica_id: str
    version: str


class Controller:
    """One reconciliation pass at a time, over everything in the namespace."""

    def __init__(self, registry: Registry, *, result_ttl_ms: int) -> None:
        self.registry = registry
        self.result_ttl_ms = result_ttl_ms

    def reconcile(self) -> None:
        reg = self.registry
        nodes = {n: rec for n, rec in reg.nodes().items()
                 if time.time() - rec.get("heartbeat", 0) < NODE_DEAD_AFTER_S}
        assigned: dict[tuple[str, str], list[_Assigned]] = defaultdict(list)
        load: dict[str, int] = {n: 0 for n in nodes}
        for node in nodes:
            for rid, rec in reg.assignments(node).items():
                assigned[(rec["app"], rec["deployment"])].append(_Assigned(node, rid, rec["version"]))
                load[node] += 1
        wanted: set[tuple[str, str]] = set()
        for app, record in reg.apps().items():
            deps = record["deployments"]
            configs = reg.deployment_configs(app, deps)
            replica_sets = reg.replica_sets(app, deps)
            for dep, (version, config) in configs.items():
                wanted.add((app, dep))
                self._reconcile_deployment(app, dep, version, DeploymentConfig(**config),
                                           assigned[(app, dep)], replica_sets.get(dep, {}), load)
        for (app, dep), items in assigned.items():
            if (app, dep) not in wanted:
                for item in items:
                    reg.unassign(item.node, item.replica_id)
        self._drop_stale_records(wanted, assigned)

    def _reconcile_deployment(self, app: str, dep: str, version: str, config: DeploymentConfig,
                              items: list[_Assigned], records: dict[str, dict[str, Any]],
                              load: dict[str, int]) -> None:
        """Bring the deployment to ``target`` replicas of ``version``.

        An upgrade rolls one replica at a time: start one of the new version; once it
        runs, retire one of the old (which drains its in-flight requests); repeat. So
        the deployment never has fewer than ``target`` replicas taking requests.
        """
        reg = self.registry
        current = [i for i in items if i.version == version]
        old = [i for i in items if i.version != version]
        failed = any(r.get("version") == version and r.get("state") == "DEPLOY_FAILED" for r in records.values())
        target = config.target_replicas
        running = sum(1 for i in current if records.get(i.replica_id, {}).get("state") == "RUNNING")
        if failed:
            reg.mark_failed(app, dep, version, self.result_ttl_ms)
            wanted = len(current)
        else:
            wanted = min(target, running + 1) if old else target
        for _ in range(wanted - len(current)):
            node = min(load, key=lambda n: load[n], default=None)
            if node is None:
                logger.warning("no live node to place a replica of %s/%s", app, dep)
                break
            rid = f"{app}#{dep}#{uuid.uuid4().hex[:8]}"
            reg.assign(node, rid, {"app": app, "deployment": dep, "version": version})
            load[node] += 1
        for extra in _prefer_unready(current, records)[:max(0, len(current) - target)]:
            reg.unassign(extra.node, extra.replica_id)
        # Retire old replicas as new ones run (all of them if the new version cannot start).
        retire = len(old) if failed else max(0, running + len(old) - target)
        for item in _prefer_unready(old, records)[:retire]:
            reg.unassign(item.node, item.replica_id)

    def _drop_stale_records(self, wanted: set[tuple[str, str]],
                            assigned: dict[tuple[str, str], list[_Assigned]]) -> None:
        """Forget failed replicas of deleted deployments or older versions."""
        reg = self.registry
        for app, dep in reg.orphan_replica_keys():
            live = {i.replica_id for i in assigned.get((app, dep), [])}
            version = None
            if (app, dep) in wanted:
                spec = reg.deployment_configs(app, [dep]).get(dep)
                version = spec[0] if spec else None
            for rid, rec in reg.replicas(app, dep).items():
                if rid not in live and rec.get("state") == "DEPLOY_FAILED" and rec.get("version") != version:
                    reg.remove_replica(app, dep, rid)


def _prefer_unready(items: list[_Assigned], records: dict[str, dict[str, Any]]) -> list[_Assigned]:
    """Order replicas so that those not yet RUNNING are stopped first."""
    return sorted(items, key=lambda i: records.get(i.replica_id, {}).get("state") == "RUNNING")
