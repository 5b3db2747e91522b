"""The Redis side of a call: what a caller sends, the inbox its replies come to, and the
connections it uses.

The functions queue script calls on a :class:`broker.scripts.Batch`, so that a caller
sends whatever it has in one round trip. :class:`Inbox` issues the commands of one reply
inbox on a sync or an asyncio client alike: each method returns what the client's call
returns (on an asyncio client, an awaitable). The futures, threads and bookkeeping of
a caller live above this, in :mod:`actors.runtime.caller`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from . import liveness, scripts
from .connection import connect, connect_async
from .keys import Keys
from .sendline import Line, SendLine

if TYPE_CHECKING:
    import redis.asyncio as aioredis

#: Seconds a listener blocks on its inbox before checking whether it should stop.
LISTEN_BLOCK_S = 1.0
#: Most replies taken from an inbox in one round trip.
REPLY_BATCH = 512
#: A listener says its process is alive (``Keys.alive(inbox)``) every ALIVE_REFRESH_S;
#: the key lives ALIVE_TTL_MS, so a dead caller is known within about 10 s.
ALIVE_REFRESH_S = 3.0
ALIVE_TTL_MS = 10_000


@dataclass(frozen=True)
class Transport:
    """A caller's connections: ``redis``, on which its threads send and read their inbox;
    ``connect_async``, which opens the client of each event loop that calls; and
    ``open_line``, which opens that loop's line for sending at once (a
    :class:`~broker.sendline.SendLine` of the loop's client). Tests pass an in-memory
    one, so that a caller's bookkeeping runs without Redis."""

    redis: redis.Redis
    connect_async: Callable[[], aioredis.Redis]
    open_line: Callable[[aioredis.Redis], Awaitable[Line]]

    @classmethod
    def for_url(cls, url: str, *, client_name: str) -> Transport:
        """Connections to the Redis at ``url``, named ``client_name`` in ``CLIENT LIST``."""
        return cls(connect(url, client_name=client_name),
                   functools.partial(connect_async, url, client_name=client_name), SendLine.open)


def enqueue(batch: scripts.Batch, keys: Keys, app: str, dep: str, req_id: str, message: bytes,
            consumes: Sequence[str], ttl_ms: int, model: str = "") -> None:
    """Queue a request (``enqueue.lua``: its reply is the queue length or a refusal, read
    by :func:`refusal`). ``model``: its multiplexed model id, which routes it if the
    deployment multiplexes."""
    args: list[Any] = [message, ttl_ms, model, keys.ns]
    for ref in consumes:
        args += (keys.detached(ref), keys.result(ref))
    batch.script(scripts.ENQUEUE, (keys.deployment(app, dep), keys.queue(app, dep), keys.controller_wake,
                                   keys.cancelled(req_id), keys.mux_members(app, dep)), args)


def refusal(reply: Any) -> tuple[int, list[Any]] | None:
    """``enqueue.lua``'s refusal code and details (see the script), or None if it queued
    the request."""
    if isinstance(reply, list):
        return int(reply[0]), reply[1:]
    if isinstance(reply, int) and reply < 0:
        return reply, []
    return None


def watch(batch: scripts.Batch, keys: Keys, req_id: str, inbox: str, ttl_ms: int) -> None:
    """Read a result, or have it pushed to ``inbox`` once written: one read of it."""
    batch.script(scripts.WATCH, (keys.result(req_id), keys.watchers(req_id), keys.reads(req_id)), (inbox, ttl_ms))


def cancel(batch: scripts.Batch, keys: Keys, app: str, dep: str, req_id: str, message: bytes, ttl_ms: int, *,
           held: bool) -> None:
    """Withdraw a queued request or flag a taken one (``cancel.lua``); ``held``: other
    calls read its result."""
    batch.script(scripts.CANCEL, (keys.queue(app, dep), keys.cancelled(req_id), keys.result(req_id),
                                  keys.mux_members(app, dep)),
                 (message, ttl_ms, keys.cancellations, req_id, "1" if held else "0", keys.ns))


def withdraw(batch: scripts.Batch, keys: Keys, app: str, dep: str, message: bytes) -> None:
    """Take back a request if no replica has taken it (replies 1 if it was still queued)."""
    batch.script(scripts.WITHDRAW, (keys.queue(app, dep), keys.mux_members(app, dep)), (keys.ns, message))


def settle(batch: scripts.Batch, keys: Keys, req_id: str, promised: str, reads: int, ttl_ms: int) -> None:
    """Promise the reads of a response passed on, or count reads that will not happen
    (``settle.lua``)."""
    batch.script(scripts.SETTLE, (keys.result(req_id), keys.reads(req_id)), (promised, reads, ttl_ms))


def fail(batch: scripts.Batch, keys: Keys, req_id: str, outcome: bytes, ttl_ms: int) -> None:
    """Write the error of a request that will never run, for the calls it was passed to."""
    scripts.complete(batch, keys, req_id, outcome, reply_to="", processing_key=keys.pattern("none"), raw=b"",
                     ttl_ms=ttl_ms)


class Inbox:
    """One reply inbox: blocking reads, drains, and the key saying its listener lives."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.alive = Keys.alive(key)
        self._beat_at = 0.0

    def wait(self, client: Any) -> Any:
        """Block up to :data:`LISTEN_BLOCK_S` for a reply (see :meth:`first`)."""
        return client.blpop([self.key], timeout=LISTEN_BLOCK_S)

    @staticmethod
    def first(reply: Any) -> list[bytes] | None:
        """The item a :meth:`wait` returned, as a batch, or None."""
        return [reply[1]] if reply is not None else None

    def drain(self, client: Any, unlink: list[str]) -> Any:
        """Delete consumed result keys and take more replies, refreshing the alive key when
        due: one round trip. Pass its result to :meth:`taken`."""
        pipe = client.pipeline(transaction=False)
        if unlink:
            pipe.unlink(*unlink)
        self._beat(pipe)
        pipe.lpop(self.key, REPLY_BATCH)
        return pipe.execute(raise_on_error=False)

    @staticmethod
    def taken(results: list[Any]) -> list[bytes] | None:
        """The replies a :meth:`drain` took; raises only if taking them failed."""
        if isinstance(results[-1], Exception):
            raise results[-1]
        return results[-1]  # type: ignore[no-any-return]  # LPOP with a count: a list or None

    def beat(self, client: Any) -> Any:
        """Say the listener lives, if it is time (None if not)."""
        if not self._due():
            return None
        pipe = client.pipeline(transaction=False)
        self._beat(pipe)
        return pipe.execute()

    def reset(self) -> None:
        """After a reconnect (Redis may have restarted empty): say it again at once."""
        self._beat_at = 0.0

    def wake(self, client: Any) -> Any:
        """Wake a listener blocked in :meth:`wait` (an empty item, which it skips)."""
        return client.lpush(self.key, b"")

    def leave(self, client: Any) -> Any:
        """The listener stops: its process no longer answers for this inbox."""
        return client.delete(self.alive)

    def _due(self) -> bool:
        return time.monotonic() - self._beat_at > ALIVE_REFRESH_S

    def _beat(self, pipe: Any) -> None:
        if self._due():
            self._beat_at = time.monotonic()
            liveness.beat(pipe, self.alive, ALIVE_TTL_MS)
