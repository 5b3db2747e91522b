"""Control-plane records of the cluster's members: workers (nodes) and their replica
assignments, gateways, the autoscaler's state, wake-up lists and the controller lease.

A member's record says what it is; whether it lives is its key in :mod:`broker.liveness`,
refreshed with every heartbeat, so liveness does not depend on the machines' clocks.
"""

from __future__ import annotations

import json
from typing import Any, cast

import redis

from . import liveness, scripts
from .keys import Keys


class ClusterRecords:
    """Reads and writes the records of one namespace's members and leader."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        # The client does not decode responses: they are bytes, which redis-py types as
        # ``bytes | str`` (hence the casts below).
        self.redis = client
        self.keys = keys

    def ping(self) -> None:
        self.redis.ping()

    def _json_hash(self, key: str) -> dict[str, Any]:
        """A hash of JSON records, by (decoded) field."""
        return {k.decode(): json.loads(v) for k, v in cast("dict[bytes, bytes]", self.redis.hgetall(key)).items()}

    # Nodes and assignments -------------------------------------------------------------------
    def register_node(self, node_id: str, record: dict[str, Any], ttl_ms: int) -> None:
        """Write the node's record and say it lives for ``ttl_ms`` more (a heartbeat)."""
        self._register("node", self.keys.nodes, node_id, record, ttl_ms)

    def _register(self, kind: str, key: str, member_id: str, record: dict[str, Any], ttl_ms: int) -> None:
        # One transaction: a reader never sees the record without its alive key (it
        # would take the member for dead).
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, member_id, json.dumps(record))
        liveness.beat(pipe, self.keys.member_alive(kind, member_id), ttl_ms)
        pipe.execute()

    def remove_node(self, node_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(self.keys.nodes, node_id)
        pipe.delete(self.keys.node_assignments(node_id), self.keys.node_wake(node_id),
                    self.keys.member_alive("node", node_id))
        pipe.lpush(self.keys.controller_wake, 1)
        pipe.execute()

    def nodes(self) -> dict[str, dict[str, Any]]:
        """Node records, each with ``heartbeat_age_s`` (see :meth:`_members`)."""
        return self._members("node", self.keys.nodes)

    def _members(self, kind: str, key: str) -> dict[str, dict[str, Any]]:
        """Member records, each with ``heartbeat_age_s``: seconds since its last heartbeat,
        None once its alive key expired (it is dead; the controller buries it)."""
        records = self._json_hash(key)
        ages = liveness.ages(self.redis, [self.keys.member_alive(kind, m) for m in records])
        return {m: {**rec, "heartbeat_age_s": age} for (m, rec), age in zip(records.items(), ages)}

    def assignments(self, node_id: str) -> dict[str, dict[str, Any]]:
        return self._json_hash(self.keys.node_assignments(node_id))

    def assign(self, node_id: str, replica_id: str, record: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.node_assignments(node_id), replica_id, json.dumps(record))
        pipe.lpush(self.keys.node_wake(node_id), 1)
        pipe.execute()

    def assignment(self, node_id: str, replica_id: str) -> dict[str, Any] | None:
        """One replica's assignment record (None once it is unassigned)."""
        raw = cast("bytes | None", self.redis.hget(self.keys.node_assignments(node_id), replica_id))
        return None if raw is None else cast("dict[str, Any]", json.loads(raw))

    def rerank(self, app: str, dep: str, records: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Rewrite the assignment records (node, replica id, record) of running replicas
        whose rank or world size changed, and tell them: they re-read their record on an
        event of their application."""
        if not records:
            return
        event = json.dumps({"app": app, "deployment": dep, "state": "RANKS"})
        args: list[str] = [self.keys.events, event]
        for _, replica_id, record in records:
            args += [replica_id, json.dumps(record)]
        scripts.RERANK(self.redis, [self.keys.node_assignments(node) for node, _, _ in records], args)

    def unassign(self, node_id: str, replica_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(self.keys.node_assignments(node_id), replica_id)
        pipe.lpush(self.keys.node_wake(node_id), 1)
        pipe.execute()

    # Gateways ---------------------------------------------------------------------------------
    def register_gateway(self, gateway_id: str, record: dict[str, Any], ttl_ms: int) -> None:
        """Write the gateway's record and say it lives for ``ttl_ms`` more (a heartbeat)."""
        self._register("gateway", self.keys.gateways, gateway_id, record, ttl_ms)

    def remove_gateway(self, gateway_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(self.keys.gateways, gateway_id)
        pipe.delete(self.keys.member_alive("gateway", gateway_id))
        pipe.execute()

    def gateways(self) -> dict[str, dict[str, Any]]:
        """Gateway records, each with ``heartbeat_age_s`` (see :meth:`_members`)."""
        return self._members("gateway", self.keys.gateways)

    # Autoscaling ------------------------------------------------------------------------------
    def scale_states(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(app, deployment) -> the autoscaler's state: ``version`` and current ``target``."""
        raw = self.redis.hgetall(self.keys.autoscale)
        return {tuple(json.loads(k)): json.loads(v) for k, v in raw.items()}

    def set_scale_state(self, app: str, dep: str, state: dict[str, Any]) -> None:
        """Save the autoscaler's state (so a new controller leader carries on from it), and
        flag a deployment scaled to zero, so that its next request wakes the controller."""
        key = self.keys.deployment(app, dep)
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(key)
                if not pipe.exists(key):
                    return  # deleted meanwhile: leave no partial hash behind
                pipe.multi()
                pipe.hset(self.keys.autoscale, json.dumps([app, dep]), json.dumps(state))
                if state["target"] == 0:
                    pipe.hset(key, "idle", "1")
                else:
                    pipe.hdel(key, "idle")
                pipe.execute()
            except redis.WatchError:
                return

    def drop_scale_state(self, app: str, dep: str) -> None:
        self.redis.hdel(self.keys.autoscale, json.dumps([app, dep]))

    # Wake-ups and leadership ----------------------------------------------------------------
    def wake_controller(self) -> None:
        self.redis.lpush(self.keys.controller_wake, 1)

    def wake_node(self, node_id: str) -> None:
        self.redis.lpush(self.keys.node_wake(node_id), 1)

    def wait_wake(self, keys: list[str], timeout_s: float) -> None:
        """Block until one of ``keys`` is pushed or the timeout passes; drop extra tokens."""
        if self.redis.blpop(keys, timeout=timeout_s) is not None:
            pipe = self.redis.pipeline(transaction=False)
            for key in keys:
                pipe.delete(key)
            pipe.execute()

    def lead(self, candidate: str, lease_ms: int) -> bool:
        return liveness.lead(self.redis, self.keys.controller_lock, candidate, lease_ms)

    def leader(self) -> str | None:
        """The id of the process running the controller, if any."""
        return liveness.holder(self.redis, self.keys.controller_lock)

    def resign(self, candidate: str) -> None:
        liveness.resign(self.redis, self.keys.controller_lock, candidate)
