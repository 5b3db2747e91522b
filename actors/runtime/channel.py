"""One event loop's way to Redis, for the caller: calls made on a loop go out from it.

Code running on an event loop gets a :class:`LoopChannel` for that loop (from its
``CallClient``): an asyncio connection, an inbox and a listener task of its own. Calls
made during one step of the loop go out in one pipeline, and their replies resolve on the
loop itself, with no hop through another thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

from broker import calls, scripts
from broker.codec import new_request_id

from . import bridge

if TYPE_CHECKING:
    from .caller import CallClient

logger = logging.getLogger("actors.runtime.caller")

#: Seconds a listener waits before retrying after losing Redis.
RECONNECT_PAUSE_S = 0.5

#: Adds an operation's commands to a batch; ``Done`` gets the reply of the first (or the
#: error). An op sent from an event loop's channel adds one command: the channel matches
#: replies to ops by position.
Add = Callable[[scripts.Batch], None]
Done = Callable[[Any], None]


class LoopChannel:
    """One event loop's way to Redis: its own inbox, connection and listener task."""

    def __init__(self, client: CallClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.inbox = client.keys.inbox(new_request_id())
        self.redis = client.transport.connect_async()
        self.pending: bridge.StepBatch[tuple[Add, Done]] = bridge.StepBatch(loop, self._flush)
        self.stopped = False
        self.listener = loop.create_task(self._listen())

    def post(self, add: Add, done: Done) -> None:
        """Queue an op; everything posted during this loop step is sent as one pipeline."""
        self.pending.post((add, done))

    def _flush(self, ops: list[tuple[Add, Done]]) -> None:
        self.loop.create_task(self._execute(ops))

    async def _execute(self, ops: list[tuple[Add, Done]]) -> None:
        batch = scripts.Batch()
        for add, _ in ops:
            add(batch)
        try:
            results = await batch.execute_async(self.redis)
        except (redis.RedisError, OSError) as e:
            results = [e] * len(ops)
        for (_, done), res in zip(ops, results):
            done(res)

    async def _listen(self) -> None:
        inbox = calls.Inbox(self.inbox)
        try:
            while not self.client.closed:
                try:
                    beat = inbox.beat(self.redis)
                    if beat is not None:
                        await beat
                    items = inbox.first(await inbox.wait(self.redis))
                    while items:
                        unlink = [k for k in map(self.client.dispatch, items) if k]
                        items = inbox.taken(await inbox.drain(self.redis, unlink))
                except (redis.RedisError, OSError) as e:
                    inbox.reset()
                    logger.warning("mqserve: reply listener lost Redis (%s); reconnecting", e)
                    await asyncio.sleep(RECONNECT_PAUSE_S)
        finally:
            self.stopped = True
            try:
                await inbox.leave(self.redis)
            except Exception:
                pass
            try:
                await self.redis.aclose()
            except Exception:  # the loop may be closing under us
                pass

    def close(self) -> None:
        """Stop the listener; safe from any thread."""
        self.stopped = True
        try:
            self.loop.call_soon_threadsafe(self.listener.cancel)
        except RuntimeError:  # loop already closed
            pass
