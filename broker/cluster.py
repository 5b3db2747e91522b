"""Control-plane records of the cluster's members: workers (nodes) and their replica
assignments, gateways, the autoscaler's state, wake-up lists and the controller lease.

Members' heartbeats are stamped with Redis's own time (``heartbeat.lua``) and their ages
read against it, so liveness does not depend on the machines' clocks agreeing.
"""

from __future__ import annotations

import json
from typing import Any, cast

import redis

from . import clock, scripts
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
    def register_node(self, node_id: str, record: dict[str, Any]) -> None:
        """Write the node's record, stamped with Redis's time (see :meth:`nodes`)."""
        scripts.HEARTBEAT(self.redis, (self.keys.nodes,), (node_id, json.dumps(record)))

    def remove_node(self, node_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(self.keys.nodes, node_id)
        pipe.delete(self.keys.node_assignments(node_id), self.keys.node_wake(node_id))
        pipe.lpush(self.keys.controller_wake, 1)
        pipe.execute()

    def nodes(self) -> dict[str, dict[str, Any]]:
        """Node records, each with ``heartbeat_age_s`` (see :meth:`_heartbeats`)."""
        return self._heartbeats(self.keys.nodes)

    def _heartbeats(self, key: str) -> dict[str, dict[str, Any]]:
        """Records stamped by ``heartbeat.lua``, each with ``heartbeat_age_s``: seconds since
        its last heartbeat. Both times are Redis's, so that liveness does not depend on
        the clocks of the machines agreeing."""
        now = clock.seconds(self.redis.time())
        return {k: {**rec, "heartbeat_age_s": now - float(rec.get("heartbeat", 0))}
                for k, rec in self._json_hash(key).items()}

    def assignments(self, node_id: str) -> dict[str, dict[str, Any]]:
        return self._json_hash(self.keys.node_assignments(node_id))

    def assign(self, node_id: str, replica_id: str, record: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.node_assignments(node_id), replica_id, json.dumps(record))
        pipe.lpush(self.keys.node_wake(node_id), 1)
        pipe.execute()

    def unassign(self, node_id: str, replica_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(self.keys.node_assignments(node_id), replica_id)
        pipe.lpush(self.keys.node_wake(node_id), 1)
        pipe.execute()

    # Gateways ---------------------------------------------------------------------------------
    def register_gateway(self, gateway_id: str, record: dict[str, Any]) -> None:
        """Write the gateway's record, stamped with Redis's time (see :meth:`gateways`)."""
        scripts.HEARTBEAT(self.redis, (self.keys.gateways,), (gateway_id, json.dumps(record)))

    def remove_gateway(self, gateway_id: str) -> None:
        self.redis.hdel(self.keys.gateways, gateway_id)

    def gateways(self) -> dict[str, dict[str, Any]]:
        """Gateway records, each with ``heartbeat_age_s`` (see :meth:`_heartbeats`)."""
        return self._heartbeats(self.keys.gateways)

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
        return bool(scripts.LEAD(self.redis, (self.keys.controller_lock,), (candidate, lease_ms)))

    def leader(self) -> str | None:
        """The id of the process running the controller, if any."""
        raw = cast("bytes | None", self.redis.get(self.keys.controller_lock))
        return raw.decode() if raw else None

    def resign(self, candidate: str) -> None:
        scripts.RESIGN(self.redis, (self.keys.controller_lock,), (candidate,))
