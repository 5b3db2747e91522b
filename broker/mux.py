"""The Redis side of model multiplexing: which replica of a deployment holds which models,
and the queue of its own that requests for them are routed to.

A deployment with a ``@serve.multiplexed`` loader has ``mux = 1`` in its hash. Then
``enqueue.lua`` routes each request (``mux.lua``): to a replica that holds the request's
model and has a free slot, else to the replica with a free slot that holds the fewest
models, else to the deployment's queue, which every replica of it reads once its own
queue is empty. So routing is decided where the state is, in one step, with no view of
the replicas to keep fresh in every caller.

- :class:`Membership` is a replica's place in that routing: it joins with its capacity,
  takes from its own queue first, and leaves (:func:`requeue`) when it drains or dies.
- :class:`Holdings` records the models a replica holds, from its event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from . import scripts
from .keys import Keys

logger = logging.getLogger("mqserve.mux")


@dataclass(frozen=True)
class Membership:
    """One replica of a multiplexed deployment, as its deployment's routing sees it."""

    keys: Keys
    app: str
    deployment: str
    replica_id: str
    #: Requests it takes at once (its ``max_ongoing_requests``): routing counts its
    #: processing list plus its own queue against it.
    capacity: int

    @property
    def own_queue(self) -> str:
        return self.keys.own_queue(self.replica_id)

    @property
    def members(self) -> str:
        return self.keys.mux_members(self.app, self.deployment)

    def join(self, client: redis.Redis) -> None:
        """Be routed to from now on (again, after Redis lost its data)."""
        client.hset(self.members, self.replica_id, self.capacity)


def requeue(client: redis.Redis, keys: Keys, app: str, dep: str, replica_id: str, messages: Sequence[bytes], *,
            leave: bool) -> int:
    """Put taken ``messages`` back where replicas take next (``requeue.lua``); with
    ``leave``, the replica is no longer routed to, and the requests waiting in its own
    queue go to other replicas. Returns how many requests went back."""
    return int(scripts.REQUEUE(client, (keys.queue(app, dep), keys.mux_members(app, dep), keys.processing(replica_id)),
                               (keys.ns, replica_id, "1" if leave else "0", *messages)))


def routed_away(client: redis.Redis, keys: Keys, app: str, dep: str) -> list[bytes]:
    """Empty the own queues of a deployment's replicas and forget its routing (the
    deployment is deleted); returns the requests that waited there, to be failed."""
    members = [m.decode() for m in cast("list[bytes]", client.hkeys(keys.mux_members(app, dep)))]
    if not members:
        return []
    pipe = client.pipeline()
    for member in members:
        pipe.lrange(keys.own_queue(member), 0, -1)
        pipe.delete(keys.own_queue(member), keys.models(member))
    pipe.delete(keys.mux_members(app, dep))
    return [m for res in pipe.execute()[:-1:2] for m in res]


def models_held(client: redis.Redis, keys: Keys, replica_ids: Iterable[str]) -> dict[str, list[str]]:
    """The models each replica holds (sorted), for those holding any."""
    ids = list(replica_ids)
    pipe = client.pipeline(transaction=False)
    for rid in ids:
        pipe.smembers(keys.models(rid))
    return {rid: sorted(m.decode() for m in held) for rid, held in zip(ids, pipe.execute()) if held}


class Holdings:
    """The models of one replica, as routing sees them: written from the replica's event
    loop, on its ``redis.asyncio`` client. Best effort: a write that fails is logged, and
    the request goes on (routing is then less exact, never wrong)."""

    def __init__(self, aio: Any, keys: Keys, replica_id: str) -> None:
        self.aio = aio
        self.key = keys.models(replica_id)

    async def hold(self, model_ids: Iterable[str]) -> None:
        """The replica holds (or is loading) these models."""
        ids = list(model_ids)
        if ids:
            await self._write(self.aio.sadd(self.key, *ids), ids)

    async def drop(self, model_id: str) -> None:
        """The replica no longer holds this model."""
        await self._write(self.aio.srem(self.key, model_id), [model_id])

    @staticmethod
    async def _write(command: Awaitable[Any], ids: list[str]) -> None:
        try:
            await command
        except (redis.RedisError, OSError) as e:
            logger.warning("mqserve: could not record models %s of this replica for routing (%s)", ids, e)
