"""The Redis side of background requests: their status records, kept outcomes and the
failed index.

A background request (``handle.options(background=True)``, or HTTP with ``Prefer:
respond-async``) is an ordinary request message with ``options["background"]`` set to
the TTL (ms) of what it leaves: its outcome under its result key, never deleted by a
read, and a status record ``{ns}:req:{id}`` any process can read by id. Every write
rides on a round trip the request path makes anyway, in a script of its own, so
ordinary requests run exactly the scripts they ran before:

- the caller's enqueue (``bg_enqueue.lua``: ``enqueue.lua`` inside, then the record);
- the replica as it starts the request (``bg_start.lua``, the one round trip added);
- the replica's outcome write (``bg_complete.lua`` in place of ``complete.lua``).

Readers use ``bg_read.lua`` (never deletes), and ``bg_cancel.lua`` withdraws a queued one
by id alone (the record keeps the queued message until a replica starts it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import redis

from . import clock, codec, scripts
from .keys import Keys

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
#: What ``bg_read.lua`` answers for an id with no record (unknown or expired), and for one
#: whose outcome has expired a moment before its record.
UNKNOWN, GONE = -1, -2
#: Exception types that mean the request was cancelled (its status is then CANCELLED).
_CANCELLED_TYPES = frozenset({"actors.exceptions.RequestCancelledError", "asyncio.exceptions.CancelledError"})
#: Longest error line kept in a record.
ERROR_LINE_CHARS = 500
#: Record fields only mqserve reads (the queued message, to withdraw it).
_INTERNAL = frozenset({"message"})


def ttl_of(options: dict[str, Any]) -> int:
    """The background TTL (ms) of a decoded message's options; 0 for an ordinary request."""
    return int(options.get(codec.BACKGROUND_OPTION) or 0)


def enqueue(batch: scripts.Batch, keys: Keys, app: str, dep: str, req_id: str, message: bytes,
            consumes: Sequence[str], result_ttl_ms: int, model: str, *, method: str, ttl_ms: int,
            http: bool = False) -> None:
    """Queue a background request and write its record (``bg_enqueue.lua``); its reply
    is ``enqueue.lua``'s (see :func:`broker.calls.refusal`)."""
    args: list[Any] = [message, result_ttl_ms, model, keys.ns]
    for ref in consumes:
        args += (keys.detached(ref), keys.result(ref))
    args += (app, dep, method, ttl_ms, "1" if http else "0")
    batch.script(scripts.BG_ENQUEUE, (keys.deployment(app, dep), keys.queue(app, dep), keys.controller_wake,
                                      keys.cancelled(req_id), keys.mux_members(app, dep), keys.background(req_id)),
                 args)


def started(client: redis.Redis, keys: Keys, req_id: str, *, attempt: int, ttl_ms: int, app: str, dep: str,
            method: str) -> bool:
    """A replica starts the request: RUNNING (one round trip, only for background requests)."""
    return bool(scripts.BG_START(client, (keys.background(req_id),), (attempt, ttl_ms, app, dep, method)))


def summary(outcome: bytes) -> tuple[str, str, str]:
    """The final status of an outcome, its error's type and its error's first line."""
    failure = codec.failure_summary(outcome)
    if failure is None:
        return SUCCEEDED, "", ""
    type_name, message = failure
    line = message.strip().split("\n", 1)[0][:ERROR_LINE_CHARS]
    return (CANCELLED if type_name in _CANCELLED_TYPES else FAILED), type_name, line


def complete(batch: scripts.Batch, keys: Keys, req_id: str, outcome: bytes, *, processing_key: str, raw: bytes,
             ttl_ms: int, inbox_ttl_ms: int, fields: dict[str, str] | None = None) -> None:
    """Write a background request's outcome, end its record (a FAILED one is indexed, and
    counted in its deployment's ``counts`` HASH) and drop ``raw`` from ``processing_key``
    (``bg_complete.lua``). ``fields``: more for the record (one never queued has none)."""
    status, error_type, error = summary(outcome)
    extra = [x for pair in (fields or {}).items() for x in pair]
    batch.script(scripts.BG_COMPLETE,
                 (keys.result(req_id), keys.watchers(req_id), processing_key, keys.detached(req_id),
                  keys.cancelled(req_id), keys.background(req_id), keys.failed),
                 (req_id, outcome, ttl_ms, raw, status, error_type, error, inbox_ttl_ms, keys.ns, *extra))


def read(batch: scripts.Batch, keys: Keys, req_id: str, inbox: str, ttl_ms: int) -> None:
    """Read the outcome, or have it pushed to ``inbox`` when written (``bg_read.lua``;
    the registration lasts as long as the record, ``ttl_ms`` if that has none)."""
    batch.script(scripts.BG_READ, (keys.result(req_id), keys.watchers(req_id), keys.background(req_id)),
                 (inbox, ttl_ms))


def cancel(batch: scripts.Batch, keys: Keys, req_id: str, cancelled_outcome: bytes, flag_ttl_ms: int) -> None:
    """Withdraw a queued background request, or flag it for its replica (``bg_cancel.lua``:
    1 withdrawn, 0 flagged, 2 already ended, -1 unknown)."""
    batch.script(scripts.BG_CANCEL,
                 (keys.background(req_id), keys.result(req_id), keys.watchers(req_id), keys.cancelled(req_id)),
                 (keys.ns, req_id, cancelled_outcome, keys.cancellations, flag_ttl_ms))


def requeued(pipe: Any, keys: Keys, req_id: str, raw: bytes, ttl_ms: int) -> None:
    """A request retried after its replica died waits again: QUEUED, and withdrawable by
    its new message (in ``pipe``, with the requeue)."""
    pipe.hset(keys.background(req_id), mapping={"status": QUEUED, "message": raw})
    pipe.pexpire(keys.background(req_id), ttl_ms)


def record(client: redis.Redis, keys: Keys, req_id: str) -> dict[str, str] | None:
    """A background request's status record (plain strings; its message left out), or None."""
    raw = cast("dict[bytes, bytes]", client.hgetall(keys.background(req_id)))
    return _public(raw) if raw else None


def result(client: redis.Redis, keys: Keys, req_id: str) -> tuple[dict[str, str] | None, bytes | None]:
    """The record and the outcome (None while it runs), in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.background(req_id))
    pipe.get(keys.result(req_id))
    raw, outcome = pipe.execute()
    return (_public(raw) if raw else None), outcome


def failed(client: redis.Redis, keys: Keys) -> list[tuple[str, dict[str, str]]]:
    """Background requests that FAILED and have not expired, oldest first; the index is
    trimmed of expired ids on the way."""
    now = clock.now()
    if now is None:
        clock.sync(client)
        now = clock.now()
    pipe = client.pipeline(transaction=False)
    pipe.zremrangebyscore(keys.failed, "-inf", int((now or 0) * 1000))
    pipe.zrange(keys.failed, 0, -1)
    ids = [i.decode() for i in pipe.execute()[1]]
    pipe = client.pipeline(transaction=False)
    for req_id in ids:
        pipe.hgetall(keys.background(req_id))
    return [(req_id, _public(raw)) for req_id, raw in zip(ids, pipe.execute()) if raw]


def _public(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items() if k.decode() not in _INTERNAL}
