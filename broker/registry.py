"""Control-plane state in Redis: applications, deployments, replicas and their events
(the cluster's members, assignments and lease are in :mod:`broker.cluster`).

Records meant for people and tools (apps, replicas, nodes) are JSON; deployment code
is a cloudpickle blob. Who writes what:

- the driver (``serve.run``/``serve.delete``) writes apps and deployments;
- the controller writes node assignments;
- a node removes the records of replica processes that ended;
- a replica writes its own record (STARTING, RUNNING, DEPLOY_FAILED).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import redis

from . import background, clock, codec, epoch, mux, scripts
from .cluster import ClusterRecords
from .errors import RouteConflictError

logger = logging.getLogger("mqserve.registry")

#: Seconds a follower of the events channel waits before subscribing again after an error.
RESUBSCRIBE_S = 1.0


class Registry(ClusterRecords):
    """Reads and writes the control-plane records of one namespace: applications,
    deployments, replicas and their events, and (from :class:`ClusterRecords`) the
    cluster's members, assignments and lease."""

    # Applications and deployments --------------------------------------------------------
    def put_app(self, record: dict[str, Any], deployments: dict[str, dict[str, Any]]) -> None:
        """Register (or upgrade) an app and its deployments atomically.

        ``deployments`` maps name -> {"spec": bytes, "config": json str, "version": str,
        "max_queued": int}. Deployments the previous version had and this one lacks are
        removed. Raises :class:`RouteConflictError` if another app has the route prefix.
        The record gets ``last_deployed_time_s``, now in Redis's clock (one clock for
        every process that reads it).
        """
        name = record["name"]
        record = {**record, "last_deployed_time_s": clock.seconds(self.redis.time())}
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.keys.apps)
                    apps = {k.decode(): json.loads(v)
                            for k, v in cast("dict[bytes, bytes]", pipe.hgetall(self.keys.apps)).items()}
                    prefix = record.get("route_prefix")
                    for other, rec in apps.items():
                        if other != name and prefix is not None and rec.get("route_prefix") == prefix:
                            raise RouteConflictError(
                                f"Route prefix '{prefix}' is already used by application '{other}'. "
                                "Give this application another route_prefix, or delete the other one.")
                    old = apps.get(name, {}).get("deployments", [])
                    pipe.multi()
                    pipe.hset(self.keys.apps, name, json.dumps(record))
                    pipe.hdel(self.keys.deleting, name)  # a new app of that name: not deleting any more
                    for dep in old:
                        if dep not in deployments:
                            pipe.delete(self.keys.deployment(name, dep))
                    for dep, fields in deployments.items():
                        pipe.delete(self.keys.deployment(name, dep))
                        pipe.hset(self.keys.deployment(name, dep), mapping=fields)  # type: ignore[arg-type]  # redis-py's mapping is invariant in its key type: it refuses dict[str, ...]
                    pipe.set(self.keys.epoch, "ok", nx=True)
                    pipe.lpush(self.keys.controller_wake, 1)
                    pipe.publish(self.keys.events, json.dumps({"app": name, "state": "DEPLOYED"}))
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def apps(self) -> dict[str, dict[str, Any]]:
        return self._json_hash(self.keys.apps)

    def deleting(self) -> dict[str, dict[str, Any]]:
        """Records of apps deleted while their replicas may still be draining."""
        return self._json_hash(self.keys.deleting)

    def finish_deleting(self, name: str) -> None:
        self.redis.hdel(self.keys.deleting, name)

    def app(self, name: str) -> dict[str, Any] | None:
        raw = self.redis.hget(self.keys.apps, name)
        return json.loads(raw) if raw else None

    def deployment(self, app: str, dep: str) -> dict[str, Any] | None:
        """``{"spec": bytes, "config": dict, "version": str, "failed": bool, "multiplexed": bool}``
        or None if not registered."""
        raw = cast("dict[bytes, bytes]", self.redis.hgetall(self.keys.deployment(app, dep)))
        if b"spec" not in raw:
            return None
        return {"spec": raw[b"spec"], "config": json.loads(raw[b"config"]), "version": raw[b"version"].decode(),
                "failed": raw.get(b"state") == b"failed", "multiplexed": raw.get(b"mux") == b"1"}

    def deployment_configs(self, app: str, deps: Iterable[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """name -> (version, config) for the registered ones among ``deps``."""
        deps = list(deps)
        pipe = self.redis.pipeline(transaction=False)
        for dep in deps:
            pipe.hmget(self.keys.deployment(app, dep), ["version", "config"])
        return {dep: (v.decode(), json.loads(c)) for dep, (v, c) in zip(deps, pipe.execute()) if v}

    def mark_failed(self, app: str, dep: str, version: str, result_ttl_ms: int, error: BaseException) -> None:
        """Refuse calls to this deployment version (its replicas cannot start), and fail
        the requests already waiting for it with ``error`` rather than leave them hanging."""
        key, queue = self.keys.deployment(app, dep), self.keys.queue(app, dep)
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.hget(key, "version") != version.encode():
                    return  # upgraded meanwhile
                pipe.multi()
                pipe.hset(key, "state", "failed")
                pipe.lrange(queue, 0, -1)
                pipe.delete(queue)
                queued = pipe.execute()[1]
            except redis.WatchError:
                return
        self._fail_messages(queued, result_ttl_ms, error)

    def delete_app(self, name: str, result_ttl_ms: int, error: BaseException) -> int:
        """Unregister an app; its queued requests fail with ``error``. The
        app is listed as deleting until its replicas have stopped (see :meth:`deleting`).

        Returns how many queued requests were failed.
        """
        record = self.app(name)
        if record is None:
            return 0
        # Requests routed to its replicas' own queues (multiplexed deployments) fail too.
        routed = [m for dep in record["deployments"] for m in mux.routed_away(self.redis, self.keys, name, dep)]
        pipe = self.redis.pipeline()
        pipe.hdel(self.keys.apps, name)
        pipe.hset(self.keys.deleting, name, json.dumps(record))
        for dep in record["deployments"]:
            pipe.delete(self.keys.deployment(name, dep), self.keys.counts(name, dep), self.keys.totals(name, dep),
                        self.keys.stats(name, dep))
            pipe.lrange(self.keys.queue(name, dep), 0, -1)
            pipe.delete(self.keys.queue(name, dep))
        pipe.lpush(self.keys.controller_wake, 1)
        pipe.publish(self.keys.events, json.dumps({"app": name, "state": "DELETED"}))
        results = pipe.execute()
        queued = [m for res in results if isinstance(res, list) for m in res] + routed
        self._fail_messages(queued, result_ttl_ms, error)
        return len(queued)

    def _fail_messages(self, messages: list[bytes], result_ttl_ms: int, error: BaseException) -> None:
        """Answer requests that will not run with ``error``: through the reply path, or for
        streamed calls through their stream."""
        outcome = codec.encode_error(error)
        batch = scripts.Batch()
        for raw in messages:
            try:
                fields = codec.decode_request(raw)
            except Exception:
                continue
            req_id, options = fields["message_id"], fields["options"]
            if background.ttl_of(options):  # FAILED, kept and listed (mqserve requests --failed)
                background.complete(batch, self.keys, req_id, outcome, processing_key=self.keys.pattern("none"),
                                    raw=b"", ttl_ms=background.ttl_of(options), inbox_ttl_ms=result_ttl_ms)
                continue
            if options.get("stream"):
                batch.command("xadd", self.keys.stream(req_id), {b"e": outcome})
                batch.command("pexpire", self.keys.stream(req_id), result_ttl_ms)
                continue
            scripts.complete(batch, self.keys, req_id, outcome, reply_to=options.get("reply_to", ""),
                             processing_key=self.keys.pattern("none"), raw=b"", ttl_ms=result_ttl_ms)
        if len(batch):
            batch.execute(self.redis)

    def recover_processing(self, replica_id: str, app: str, dep: str, result_ttl_ms: int,
                           error: BaseException) -> tuple[int, int]:
        """A replica died: the requests it had taken and not answered go back to the front
        of the queue if the deployment's ``max_request_retries`` allows another attempt
        (never streamed ones or WebSockets: their items may have been read), else fail
        with ``error``.
        It leaves its deployment's routing (if it multiplexes): the requests routed to it
        and not taken go to other replicas. Returns (retried, failed)."""
        pipe = self.redis.pipeline()
        pipe.lrange(self.keys.processing(replica_id), 0, -1)
        pipe.delete(self.keys.processing(replica_id))
        taken = pipe.execute()[0]
        if not taken:
            mux.requeue(self.redis, self.keys, app, dep, replica_id, [], leave=True)
            return 0, 0
        spec = self.deployment_configs(app, [dep]).get(dep)
        retries = int(spec[1].get("max_request_retries", 0)) if spec else 0
        again, lost = [], []
        for raw in taken:
            try:
                fields = codec.decode_request(raw)
            except Exception:
                continue  # not ours (or forged): nobody to answer
            options = fields["options"]
            once = options.get("stream") or options.get("socket")
            if spec and not once and int(options.get("attempt", 0)) < retries:
                again.append(codec.retried_request(fields))
            else:
                lost.append(raw)
        self._requeued_background(again)  # first: a replica may start them as soon as they are back
        mux.requeue(self.redis, self.keys, app, dep, replica_id, again, leave=True)  # these run next
        self._fail_messages(lost, result_ttl_ms, error)
        return len(again), len(lost)

    def _requeued_background(self, messages: list[bytes]) -> None:
        """Background requests put back for another attempt are QUEUED again."""
        pipe = self.redis.pipeline(transaction=False)
        for raw in messages:
            fields = codec.decode_request(raw)
            if background.ttl_of(fields["options"]):
                background.requeued(pipe, self.keys, fields["message_id"], raw, background.ttl_of(fields["options"]))
        if len(pipe):
            pipe.execute()

    # A Redis that restarted empty -------------------------------------------------------------
    def data_lost(self, seen: str | None) -> tuple[bool, str]:
        """See :func:`broker.epoch.check`."""
        return epoch.check(self.redis, self.keys, seen)

    def deployment_fields(self, app: str, dep: str) -> dict[bytes, bytes]:
        """The raw fields of a deployment's hash (to write them back after a data loss)."""
        return cast("dict[bytes, bytes]", self.redis.hgetall(self.keys.deployment(app, dep)))

    def restore_app(self, record: dict[str, Any], dep: str, fields: dict[bytes, bytes]) -> None:
        """Write back an app record and one deployment's hash where they are missing."""
        name = record["name"]
        key = self.keys.deployment(name, dep)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(self.keys.apps, name, json.dumps(record))
        pipe.exists(key)
        exists = pipe.execute()[1]
        pipe = self.redis.pipeline(transaction=False)
        if not exists:
            pipe.hset(key, mapping={k: v for k, v in fields.items() if k not in (b"idle", b"state")})
        pipe.lpush(self.keys.controller_wake, 1)
        pipe.publish(self.keys.events, json.dumps({"app": name, "state": "RESTORED"}))
        pipe.execute()

    # Replicas ---------------------------------------------------------------------------
    def set_replica(self, app: str, dep: str, replica_id: str, record: dict[str, Any]) -> None:
        record = {**record, "updated": time.time()}
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.replicas(app, dep), replica_id, json.dumps(record))
        pipe.lpush(self.keys.controller_wake, 1)
        pipe.publish(self.keys.events, json.dumps({"app": app, "deployment": dep, "replica": replica_id,
                                                  "state": record.get("state")}))
        pipe.execute()

    def remove_replica(self, app: str, dep: str, replica_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(self.keys.replicas(app, dep), replica_id)
        pipe.delete(self.keys.replica_error(replica_id))
        pipe.lpush(self.keys.controller_wake, 1)
        pipe.publish(self.keys.events, json.dumps({"app": app, "deployment": dep, "replica": replica_id,
                                                  "state": "REMOVED"}))
        pipe.execute()

    def replicas(self, app: str, dep: str) -> dict[str, dict[str, Any]]:
        return self._json_hash(self.keys.replicas(app, dep))

    def replica_sets(self, app: str, deps: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
        deps = list(deps)
        pipe = self.redis.pipeline(transaction=False)
        for dep in deps:
            pipe.hgetall(self.keys.replicas(app, dep))
        return {dep: {k.decode(): json.loads(v) for k, v in raw.items()} for dep, raw in zip(deps, pipe.execute())}

    def set_replica_error(self, replica_id: str, blob: bytes, ttl_ms: int) -> None:
        self.redis.set(self.keys.replica_error(replica_id), blob, px=ttl_ms)

    def replica_error(self, replica_id: str) -> bytes | None:
        return cast("bytes | None", self.redis.get(self.keys.replica_error(replica_id)))

    def orphan_replica_keys(self) -> list[tuple[str, str]]:
        """(app, deployment) pairs that have replica records, found by key scan."""
        prefix = self.keys.replicas("", "")[:-2]
        out = []
        for key in self.redis.scan_iter(match=self.keys.replicas("*", "*"), count=500):
            app, _, dep = key.decode()[len(prefix) + 1:].partition(":")
            out.append((app, dep))
        return out

    def load(self, app: str, deps: Iterable[str], replica_ids: dict[str, list[str]]) -> dict[str, dict[str, int]]:
        """Queue depth and in-flight count per deployment (in-flight from processing lists;
        queued includes the requests routed to replicas' own queues, see :mod:`broker.mux`)."""
        deps = list(deps)
        pipe = self.redis.pipeline(transaction=False)
        for dep in deps:
            pipe.llen(self.keys.queue(app, dep))
            for rid in replica_ids.get(dep, []):
                pipe.llen(self.keys.processing(rid))
                pipe.llen(self.keys.own_queue(rid))
        results = iter(pipe.execute())
        out = {}
        for dep in deps:
            depth, ongoing = next(results), 0
            for _ in replica_ids.get(dep, []):
                ongoing += next(results)
                depth += next(results)
            out[dep] = {"queued": depth, "ongoing": ongoing}
        return out

    def leave_routing(self, app: str, dep: str, replica_id: str) -> None:
        """A replica that never served is gone: forget the models it held (a constructor
        may load some); see :mod:`broker.mux`."""
        mux.requeue(self.redis, self.keys, app, dep, replica_id, [], leave=True)

    def models_held(self, replica_ids: Iterable[str]) -> dict[str, list[str]]:
        """The models each replica of a multiplexed deployment holds (see :mod:`broker.mux`)."""
        return mux.models_held(self.redis, self.keys, replica_ids)

    # Members that died ---------------------------------------------------------------------
    def bury_node(self, node_id: str, result_ttl_ms: int, error: BaseException) -> list[str]:
        """A node stopped heartbeating (its machine or process died, replicas with it):
        fail the requests its replicas held, drop their records, then the node's.
        Returns the ids of the replicas it had, so they can be started elsewhere."""
        assigned = self.assignments(node_id)
        for rid, rec in assigned.items():
            self.recover_processing(rid, rec["app"], rec["deployment"], result_ttl_ms, error)
            self.remove_replica(rec["app"], rec["deployment"], rid)
        self.remove_node(node_id)
        return list(assigned)

    def cancelled_taken(self, replica_id: str) -> list[str]:
        """Ids of the requests in a replica's processing list whose cancel flag is set."""
        ids = []
        for raw in cast("list[bytes]", self.redis.lrange(self.keys.processing(replica_id), 0, -1)):
            try:
                ids.append(codec.decode_request(raw)["message_id"])
            except Exception:
                continue  # not ours: the consumer drops it
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for req_id in ids:
            pipe.exists(self.keys.cancelled(req_id))
        return [req_id for req_id, flagged in zip(ids, pipe.execute()) if flagged]

    def subscribe(self, *, cancellations: bool = False) -> Any:
        """A pub/sub subscription to state-change events, and to cancelled request ids if
        asked (call ``get_message(timeout=)``; ``channel`` tells them apart)."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.keys.events, *([self.keys.cancellations] if cancellations else []))
        return pubsub

    def follow(self, handle: Callable[[dict[str, Any] | None], object], stopped: threading.Event, *,
               every_s: float, what: str, cancellations: bool = False,
               subscribed: Callable[[], None] | None = None) -> None:
        """Pass each message of :meth:`subscribe` to ``handle``, or None after ``every_s``
        without one, until ``stopped`` is set. After an error (Redis lost, or ``handle``
        raised) subscribe again, having closed the subscription it replaces: that one
        would otherwise stay connected, and subscribed, until garbage collection.

        ``subscribed`` is called each time Redis has confirmed a (new) subscription: from
        then on nothing published is missed, so it may look up what was published before.
        """
        while not stopped.is_set():
            try:
                with self.subscribe(cancellations=cancellations) as pubsub:
                    pubsub.ping()  # answered after the SUBSCRIBE: its pong confirms it
                    while not stopped.is_set():
                        message = pubsub.get_message(timeout=every_s)
                        if message is not None and message["type"] == "pong":
                            if subscribed is not None:
                                subscribed()
                            continue
                        handle(message)
            except Exception as e:
                logger.warning("mqserve: following %s failed (%s); subscribing again", what, e)
                stopped.wait(RESUBSCRIBE_S)

    def clear_namespace(self) -> None:
        """Delete every key of this namespace (tests and ``mqserve shutdown --purge``)."""
        keys = list(self.redis.scan_iter(match=self.keys.pattern(), count=1000))
        for i in range(0, len(keys), 500):
            self.redis.unlink(*keys[i:i + 500])
