"""What waits in a deployment's queues, for operators (``mqserve queue``).

A deployment's waiting requests are its queue ``q:{app}:{dep}`` and, for a multiplexed
deployment, the own queues ``rq:{replica}`` its requests were routed to (see
:mod:`broker.mux`); what its replicas run is in their processing lists. Callers push
at the left and replicas take from the right, so the oldest request is at the right end
of each list. Ages are measured against Redis's ``TIME``: ``message_timestamp`` is
Redis's clock (``codec.encode_request``), and the operator's machine may disagree with it.

Reading a request decodes its envelope (mqserve's own dict of plain values, as replicas
do) but never the call's arguments: those are user pickles, described from their opcodes
by :mod:`broker.pickled`.

Dropping a request uses the caller's own withdrawal (``withdraw.lua``: only if no
replica took it meanwhile) and answers its caller as every request that will not run
is answered (:meth:`Registry._fail_messages`, through ``complete.lua``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, cast

from . import codec, pickled, scripts
from .registry import Registry


@dataclass(frozen=True)
class Waiting:
    """One waiting request, as far as it can be read without running user code."""

    id: str
    method: str
    #: Seconds since it was sent (Redis's clock); None if its sender had not read that clock.
    age_s: float | None
    #: The client id of the caller's reply inbox (``{ns}:inbox:{client}``); None for streamed calls (no inbox).
    caller: str | None
    #: Its absolute deadline, Redis-time ms (``options["deadline_ms"]``), if it has one.
    deadline_ms: int | None
    #: "queue" (the deployment's), or the id of the replica whose own queue holds it.
    where: str
    #: Size in bytes of the pickled arguments.
    size: int
    #: Type of each argument (``"HTTP GET /path"`` for an HTTP request).
    args: list[str]
    attempt: int = 0
    raw: bytes = field(default=b"", repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["raw"]
        return out


@dataclass(frozen=True)
class Depth:
    """One deployment's queue at a glance."""

    app: str
    deployment: str
    queued: int
    #: Age in seconds of the oldest waiting request; None if none waits (or its age is unknown).
    oldest_age_s: float | None
    #: Replica id -> requests it has taken and not answered.
    in_flight: dict[str, int]
    expired: int
    failed: int


class Queues(Registry):
    """Reads, and on an operator's word empties, the queues of a namespace's deployments."""

    def now_ms(self) -> int:
        """Redis's time in ms (one round trip): the clock request timestamps are in."""
        return int(clock_ms(self.redis.time()))

    def depth(self, app: str, dep: str, replica_ids: list[str], now_ms: int) -> Depth:
        """Counts for one deployment; ``replica_ids`` are its replicas (their in-flight)."""
        lists = self._lists(app, dep, replica_ids)
        pipe = self.redis.pipeline(transaction=False)
        for key in lists.values():
            pipe.llen(key)
            pipe.lindex(key, -1)
        for rid in replica_ids:
            pipe.llen(self.keys.processing(rid))
        pipe.hmget(self.keys.counts(app, dep), ["expired", "failed"])
        results = pipe.execute()
        n = len(lists)
        heads = [cast("bytes | None", raw) for raw in results[1:2 * n:2]]
        sent = [t for t in (_timestamp(raw) for raw in heads if raw) if t]
        expired, failed = results[-1]
        return Depth(app, dep, queued=sum(results[0:2 * n:2]),
                     oldest_age_s=max(0.0, (now_ms - min(sent)) / 1000) if sent else None,
                     in_flight=dict(zip(replica_ids, results[2 * n:-1])),
                     expired=int(expired or 0), failed=int(failed or 0))

    def waiting(self, app: str, dep: str, replica_ids: list[str], now_ms: int, limit: int) -> list[Waiting]:
        """The ``limit`` oldest waiting requests (fewer if fewer wait), oldest first."""
        lists = self._lists(app, dep, replica_ids)
        pipe = self.redis.pipeline(transaction=False)
        for key in lists.values():
            pipe.lrange(key, -limit, -1)
        found = [_describe(raw, where, now_ms)
                 for where, raws in zip(lists, pipe.execute()) for raw in reversed(raws)]
        found.sort(key=lambda w: -1.0 if w.age_s is None else w.age_s, reverse=True)
        return found[:limit]

    def find(self, app: str, dep: str, replica_ids: list[str], req_id: str) -> Waiting | None:
        """The waiting request whose id (or user-visible request id) is ``req_id``."""
        lists = self._lists(app, dep, replica_ids)
        pipe = self.redis.pipeline(transaction=False)
        for key in lists.values():
            pipe.lrange(key, 0, -1)
        for where, raws in zip(lists, pipe.execute()):
            for raw in raws:
                fields = _fields(raw)
                if fields and req_id in (fields["message_id"], codec.request_id_of(fields["message_id"],
                                                                                   fields["options"])):
                    return _describe(raw, where, 0)
        return None

    def drop(self, app: str, dep: str, request: Waiting, result_ttl_ms: int, error: BaseException) -> bool:
        """Take ``request`` out of its queue and answer its caller with ``error``; False if
        a replica took it meanwhile (or its caller withdrew it)."""
        taken_back = scripts.WITHDRAW(self.redis, (self.keys.queue(app, dep), self.keys.mux_members(app, dep)),
                                      (self.keys.ns, request.raw))
        if taken_back != 1:
            return False
        self._not_run([request.raw], result_ttl_ms, error)
        return True

    def purge(self, app: str, dep: str, replica_ids: list[str], result_ttl_ms: int, error: BaseException) -> int:
        """Empty every queue of the deployment at once (one transaction, so no replica
        takes a request half way) and answer each request's caller with ``error``.
        Returns how many requests were dropped."""
        lists = list(self._lists(app, dep, replica_ids).values())
        pipe = self.redis.pipeline(transaction=True)
        for key in lists:
            pipe.lrange(key, 0, -1)
            pipe.delete(key)
        messages = [raw for res in pipe.execute()[::2] for raw in res]
        self._not_run(messages, result_ttl_ms, error)
        return len(messages)

    def _not_run(self, messages: list[bytes], result_ttl_ms: int, error: BaseException) -> None:
        """Answer the callers, and count as done the reads of the responses these requests
        consumed (chained arguments), which they will never make: the results of those
        are then deleted once their other readers have read them (``settle.lua``)."""
        self._fail_messages(messages, result_ttl_ms, error)
        batch = scripts.Batch()
        for raw in messages:
            fields = _fields(raw)
            for ref in fields["args"][2] if fields else ():
                batch.script(scripts.SETTLE, (self.keys.result(ref), self.keys.reads(ref)), ("", 1, result_ttl_ms))
        if len(batch):
            batch.execute(self.redis)

    def _lists(self, app: str, dep: str, replica_ids: list[str]) -> dict[str, str]:
        """Where requests of the deployment wait: "queue" -> its queue, and replica id ->
        its own queue for each replica routed to (multiplexed deployments only)."""
        members = [m.decode() for m in cast("list[bytes]", self.redis.hkeys(self.keys.mux_members(app, dep)))]
        lists = {"queue": self.keys.queue(app, dep)}
        if members:
            lists.update({rid: self.keys.own_queue(rid) for rid in dict.fromkeys([*members, *replica_ids])})
        return lists


def clock_ms(reply: Any) -> float:
    sec, usec = reply
    return int(sec) * 1000 + int(usec) / 1000


def _fields(raw: bytes) -> dict[str, Any] | None:
    """The envelope of a queued message, or None if it is not ours (or forged)."""
    try:
        return codec.decode_request(raw)
    except Exception:
        return None


def _timestamp(raw: bytes) -> int:
    fields = _fields(raw)
    return int(fields.get("message_timestamp") or 0) if fields else 0


def _describe(raw: bytes, where: str, now_ms: int) -> Waiting:
    fields = _fields(raw)
    if fields is None:
        return Waiting("?", "?", None, None, None, where, len(raw), ["unreadable message"], raw=raw)
    options = fields["options"]
    method, payload, _refs = fields["args"]
    sent = int(fields.get("message_timestamp") or 0)
    reply_to = str(options.get("reply_to") or "")
    caller = reply_to.rpartition(":inbox:")[2] if reply_to else None
    if options.get("http") or options.get("socket"):
        args = [pickled.describe_http(payload, "WebSocket" if options.get("socket") else "HTTP")]
    else:
        args = pickled.describe_call(payload)
    deadline = options.get("deadline_ms")
    return Waiting(
        id=fields["message_id"],
        method=str(method), age_s=max(0.0, (now_ms - sent) / 1000) if sent and now_ms else None,
        caller=caller or None, deadline_ms=int(deadline) if deadline else None, where=where,
        size=len(payload), args=args, attempt=int(options.get("attempt", 0)), raw=raw)
