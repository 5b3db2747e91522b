"""The controller: makes the replicas that run match the applications registered.

It runs in a thread of every node (``mqserve worker``) and gateway process, but acts in
only one at a time: the one holding the controller lease in Redis. If that process dies
the lease expires and another takes over, so there is no separate service to run. Each
pass compares, per deployment, the replicas assigned to nodes with the target count of
the current version (fixed, or the autoscaler's), and assigns or unassigns replicas;
nodes start and stop the processes. Nodes that stop heartbeating are buried: the
requests their replicas held fail, and their replicas are started elsewhere.

Upgrades: replicas of an older version are unassigned once the new version has its
target count RUNNING, so an app keeps answering while it is redeployed.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from broker import clock, stats
from broker.connection import connect
from broker.keys import Keys
from broker.registry import Registry

from ..config import DeploymentConfig
from ..exceptions import DeploymentUnavailableError, ReplicaDiedError
from ..status import ENDED_STATES, stopping
from . import ranks
from .autoscaler import ScaleState, decide, initial_target

logger = logging.getLogger("mqserve.controller")

#: Seconds without a heartbeat after which a node (or gateway) counts as dead.
#: Nodes heartbeat every second; with the lease below, a dead worker's replicas run
#: elsewhere within about 7 s.
NODE_DEAD_AFTER_S = 5.0
#: The TTL of a member's alive key (``broker.liveness``), set again by every heartbeat.
MEMBER_TTL_MS = int(NODE_DEAD_AFTER_S * 1000)
#: Lease of the controller role in ms; the leader renews it every pass.
CONTROLLER_LEASE_MS = 4000
#: Seconds between passes when nothing wakes the controller (also the autoscaler's period).
PASS_S = 0.5
#: Seconds after a Redis restart that lost its data during which the controller removes
#: nothing, while workers and replicas write their records back.
RESTORE_GRACE_S = 5.0
#: Seconds between sweeps for records of failed replicas that nothing refers to any more.
SWEEP_S = 10.0
#: Seconds between two samples of every deployment's queue depth and in-flight count
#: for the dashboard (``broker.stats``), taken from what a pass reads anyway.
SAMPLE_S = 1.0


@dataclass
class _Assigned:
    node: str
    replica_id: str
    version: str
    #: Its assignment record, as read this pass (ranks included, see ``ranks``).
    record: dict[str, Any] = field(default_factory=dict)


class Controller:
    """One reconciliation pass at a time, over everything in the namespace."""

    def __init__(self, registry: Registry, *, result_ttl_ms: int) -> None:
        self.registry = registry
        self.result_ttl_ms = result_ttl_ms
        #: Autoscaler timers (the targets themselves live in Redis, for the next leader).
        self.scale: dict[tuple[str, str], ScaleState] = {}
        self.unplaced: set[tuple[str, str]] = set()
        self.swept_at = 0.0
        self.run_id: str | None = None
        self.restoring_until = 0.0
        self.sampled_at = 0.0
        #: The load last sampled per deployment: a deployment idle since is not sampled again.
        self.sampled: dict[tuple[str, str], tuple[int, int]] = {}

    def reconcile(self) -> None:
        reg = self.registry
        lost, self.run_id = reg.data_lost(self.run_id)
        if lost:  # Redis restarted empty: give the owners time to write their records back
            logger.warning("Redis lost its data; waiting %.0f s for workers and replicas to restore it",
                           RESTORE_GRACE_S)
            self.restoring_until = time.monotonic() + RESTORE_GRACE_S
        if time.monotonic() < self.restoring_until:
            return  # an app not restored yet is not an app deleted
        nodes = self._live_nodes()
        assigned: dict[tuple[str, str], list[_Assigned]] = defaultdict(list)
        load: dict[str, int] = {n: 0 for n in nodes}
        for node in nodes:
            for rid, rec in reg.assignments(node).items():
                assigned[(rec["app"], rec["deployment"])].append(_Assigned(node, rid, rec["version"], rec))
                load[node] += 1
        capacity = {n: rec.get("max_replicas") for n, rec in nodes.items()}
        scale_states = reg.scale_states()
        wanted: set[tuple[str, str]] = set()
        loads: dict[tuple[str, str], tuple[int, int]] = {}
        for app, record in reg.apps().items():
            deps = record["deployments"]
            configs = reg.deployment_configs(app, deps)
            replica_sets = reg.replica_sets(app, deps)
            requests = reg.load(app, deps, {d: list(replica_sets.get(d, {})) for d in deps})
            loads.update(((app, d), (n["queued"], n["ongoing"])) for d, n in requests.items())
            for dep, (version, raw_config) in configs.items():
                wanted.add((app, dep))
                config = DeploymentConfig(**raw_config)
                target = config.target_replicas
                if config.autoscaling_config is not None:
                    target = self._autoscale(app, dep, version, config.autoscaling_config,
                                             scale_states.get((app, dep)), requests[dep],
                                             len(assigned[(app, dep)]))
                self._reconcile_deployment(app, dep, version, config, target, assigned[(app, dep)],
                                           replica_sets.get(dep, {}), load, capacity)
        for (app, dep), items in assigned.items():
            if (app, dep) not in wanted:
                for item in items:
                    reg.unassign(item.node, item.replica_id)
        for key in set(scale_states) - wanted:
            reg.drop_scale_state(*key)
            self.scale.pop(key, None)
        for app, record in reg.deleting().items():
            self._finish_deleting(app, record)
        self._sample(loads)
        if time.monotonic() - self.swept_at > SWEEP_S:  # a key scan: not on every pass
            self.swept_at = time.monotonic()
            self._drop_stale_records(wanted, assigned)

    def _sample(self, loads: dict[tuple[str, str], tuple[int, int]]) -> None:
        """Once a second, the dashboard's sample of each deployment's queue depth and
        in-flight count; an idle deployment is written once, when it becomes idle."""
        if time.monotonic() - self.sampled_at < SAMPLE_S:
            return
        self.sampled_at = time.monotonic()
        idle = (0, 0)
        changed = {key: load for key, load in loads.items() if load != idle or self.sampled.get(key, idle) != idle}
        self.sampled = loads
        now = clock.now()
        stats.sample_load(self.registry.redis, self.registry.keys, changed,
                          int((time.time() if now is None else now) * 1000))

    def _live_nodes(self) -> dict[str, dict[str, Any]]:
        """Nodes that heartbeat; bury the others (and forget silent gateways)."""
        reg = self.registry
        live = {}
        for node, rec in reg.nodes().items():
            if heartbeat_fresh(rec):
                live[node] = rec
                continue
            lost = reg.bury_node(node, self.result_ttl_ms, ReplicaDiedError(
                f"The worker '{node}' running this request stopped responding (no heartbeat for "
                f"{NODE_DEAD_AFTER_S:.0f} s) before answering."))
            logger.warning("worker %s is gone; replacing its %d replica(s)", node, len(lost))
        for gateway, rec in reg.gateways().items():
            if not heartbeat_fresh(rec):
                reg.remove_gateway(gateway)
        return live

    def _autoscale(self, app: str, dep: str, version: str, auto: dict[str, Any],
                   saved: dict[str, Any] | None, load: dict[str, int], running: int) -> int:
        """The autoscaler's target for this pass; saved to Redis when it changes."""
        key = (app, dep)
        lo, hi = int(auto["min_replicas"]), int(auto["max_replicas"])
        if saved is None:  # a new deployment, or a Redis that lost its data: keep what runs
            current = max(lo, min(hi, running)) if running else initial_target(auto)
        else:  # an upgrade keeps the current scale, within the new bounds
            current = max(lo, min(hi, int(saved["target"])))
        timers = self.scale.get(key) or ScaleState(current)
        timers.target = current
        state = decide(auto, timers, load["queued"] + load["ongoing"], time.time())
        self.scale[key] = state
        if saved is None or state.target != saved["target"] or saved.get("version") != version:
            if saved is not None and state.target != saved["target"]:
                logger.info("autoscaling %s/%s from %d to %d replicas (%d queued, %d running)",
                            app, dep, saved["target"], state.target, load["queued"], load["ongoing"])
            record: dict[str, Any] = {"version": version, "target": state.target}
            if saved is not None and saved.get("version") == version and state.target != saved["target"]:
                record["from"] = saved["target"]  # the autoscaler's own move: serve.status says so
            self.registry.set_scale_state(app, dep, record)
        return state.target

    def _reconcile_deployment(self, app: str, dep: str, version: str, config: DeploymentConfig, target: int,
                              items: list[_Assigned], records: dict[str, dict[str, Any]],
                              load: dict[str, int], capacity: dict[str, int | None]) -> None:
        """Bring the deployment to ``target`` replicas of ``version``.

        An upgrade rolls one replica at a time: start one of the new version; once it
        runs, retire one of the old (which drains its in-flight requests); repeat. So
        the deployment never has fewer than ``target`` replicas taking requests.

        The record of a replica that failed its health checks stays (the deployment
        shows UNHEALTHY) until its replacement runs. Ranks and world size go in the
        assignment records (see ``ranks``); running replicas hear of changes to theirs.
        """
        reg = self.registry
        current = [i for i in items if i.version == version]
        old = [i for i in items if i.version != version]
        failed = any(r.get("version") == version and r.get("state") == "DEPLOY_FAILED" for r in records.values())
        running = sum(1 for i in current if records.get(i.replica_id, {}).get("state") == "RUNNING")
        if failed:
            reg.mark_failed(app, dep, version, self.result_ttl_ms, DeploymentUnavailableError(
                f"Deployment '{dep}' of application '{app}' failed to start."))
            wanted = len(current)
        else:
            wanted = min(target, running + 1) if old else target
        new = self._place(app, dep, wanted - len(current), load, capacity)
        dropped = _prefer_unready(current, records)[:max(0, len(current) - target)]
        # Retire old replicas as new ones run (all of them if the new version cannot start).
        retire = len(old) if failed else max(0, running + len(old) - target)
        dropped += _prefer_unready(old, records)[:retire]
        for item in dropped:
            reg.unassign(item.node, item.replica_id)
        gone = {i.replica_id for i in dropped}
        kept = [i for i in items if i.replica_id not in gone]
        steady = not (old or new or dropped or failed) and running == len(current) == target
        fields = ranks.plan([(i.replica_id, i.node, i.record) for i in kept] + [(r, n, None) for r, n in new],
                            world_size=target, compact=steady)
        for rid, node in new:
            # The node kills a replica that has not stopped this long after it was told to.
            reg.assign(node, rid, {"app": app, "deployment": dep, "version": version,
                                   "graceful_shutdown_timeout_s": config.graceful_shutdown_timeout_s, **fields[rid]})
        reg.rerank(app, dep, [(i.node, i.replica_id, {**i.record, **fields[i.replica_id]})
                              for i in kept if i.replica_id in fields])
        live = {i.replica_id for i in items}
        for rid, rec in records.items():
            if rec.get("state") == "UNHEALTHY" and rid not in live and \
                    (running >= target or rec.get("version") != version):
                reg.remove_replica(app, dep, rid)

    def _place(self, app: str, dep: str, count: int, load: dict[str, int],
               capacity: dict[str, int | None]) -> list[tuple[str, str]]:
        """Ids and nodes for ``count`` new replicas of ``app/dep``, on the least-loaded
        nodes with room (fewer if there is no room: the next pass tries again)."""
        placed = []
        for _ in range(count):
            node = _least_loaded(load, capacity)
            if node is None:
                if (app, dep) not in self.unplaced:
                    logger.warning("no worker has room for a replica of %s/%s: start a worker "
                                   "(mqserve worker) or raise --max-replicas", app, dep)
                self.unplaced.add((app, dep))
                break
            self.unplaced.discard((app, dep))
            placed.append((f"{app}#{dep}#{uuid.uuid4().hex[:8]}", node))
            load[node] += 1
        return placed

    def _finish_deleting(self, app: str, record: dict[str, Any]) -> None:
        """A deleted app stops being listed (as DELETING) once its replicas have stopped;
        the records of replicas that ended on their own (failed) go with it."""
        reg = self.registry
        records = reg.replica_sets(app, record["deployments"])
        if stopping(records):
            return
        for dep, recs in records.items():
            for rid in recs:
                reg.remove_replica(app, dep, rid)
        reg.finish_deleting(app)

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
                if rid not in live and rec.get("state") in ENDED_STATES and rec.get("version") != version:
                    reg.remove_replica(app, dep, rid)


def heartbeat_fresh(record: dict[str, Any]) -> bool:
    """Whether a node or gateway record (from ``Registry.nodes`` or ``gateways``) was
    refreshed within :data:`NODE_DEAD_AFTER_S` (its alive key, which lives that long,
    has not expired)."""
    return record.get("heartbeat_age_s") is not None


def _least_loaded(load: dict[str, int], capacity: dict[str, int | None]) -> str | None:
    """The node with the fewest replicas among those below their ``--max-replicas``."""
    open_nodes = [n for n in load if (cap := capacity.get(n)) is None or load[n] < int(cap)]
    return min(open_nodes, key=lambda n: (load[n], n), default=None)


def _prefer_unready(items: list[_Assigned], records: dict[str, dict[str, Any]]) -> list[_Assigned]:
    """Order replicas so that those not yet RUNNING are stopped first."""
    return sorted(items, key=lambda i: records.get(i.replica_id, {}).get("state") == "RUNNING")


class ControllerLoop:
    """The controller's thread in a node or gateway: compete for the lease, and while
    holding it, reconcile on every wake-up and every :data:`PASS_S`.

    ``heartbeat`` (if given) runs before every pass, whether or not this process leads.
    """

    def __init__(self, url: str, namespace: str, candidate: str, *, result_ttl_ms: int,
                 heartbeat: Callable[[Registry], None] | None = None) -> None:
        self.url, self.keys, self.candidate = url, Keys(namespace), candidate
        self.result_ttl_ms = result_ttl_ms
        self.heartbeat = heartbeat
        self.stopped = threading.Event()
        self.leading = False
        self.thread = threading.Thread(target=self._run, name="mqserve-controller", daemon=True)

    def start(self) -> ControllerLoop:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        try:
            Registry(connect(self.url), self.keys).wake_controller()  # leave the blocking wait
        except redis.RedisError:
            pass
        self.thread.join(timeout=10)

    def _run(self) -> None:
        registry: Registry | None = None
        controller: Controller | None = None
        while not self.stopped.is_set():
            try:
                if registry is None:
                    registry = Registry(connect(self.url), self.keys)
                    controller = Controller(registry, result_ttl_ms=self.result_ttl_ms)
                if self.heartbeat is not None:
                    self.heartbeat(registry)
                leading = registry.lead(self.candidate, CONTROLLER_LEASE_MS)
                if leading != self.leading:
                    logger.info("%s %s the controller", self.candidate, "now runs" if leading else "no longer runs")
                    self.leading = leading
                if leading:
                    assert controller is not None
                    controller.reconcile()
                    registry.wait_wake([self.keys.controller_wake], PASS_S)
                else:
                    self.stopped.wait(PASS_S)
            except redis.RedisError as e:  # Redis restarting: retry
                logger.warning("controller lost Redis (%s); retrying", e)
                self.stopped.wait(1.0)
            except Exception:  # a bad record must not stop the controller for good
                logger.exception("controller pass failed; retrying")
                self.stopped.wait(1.0)
        if registry is not None:
            try:
                registry.resign(self.candidate)
            except redis.RedisError:
                pass
