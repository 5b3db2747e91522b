"""One event loop's way to Redis, for the caller: calls made on a loop go out from it.

Code running on an event loop gets a :class:`LoopChannel` for that loop (from its
``CallClient``): an asyncio client, an inbox and a listener task of its own, and a
:class:`~actors.runtime.sender.LoopSender` that sends each call without waiting for the
loop to be free (the first of a loop step before ``.remote()`` returns). Replies resolve
on the loop itself, with no hop through another thread.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import redis

from broker import calls
from broker.codec import new_request_id

from .sender import RECONNECT_PAUSE_S, Add, Done, LoopSender

if TYPE_CHECKING:
    from .caller import CallClient

logger = logging.getLogger("actors.runtime.caller")


class LoopChannel:
    """One event loop's way to Redis: its own inbox, client, sender and listener task."""

    def __init__(self, client: CallClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.inbox = client.keys.inbox(new_request_id())
        self.redis = client.transport.connect_async()
        self.sender = LoopSender(loop, self.redis, client.transport.redis, client.transport.open_line)
        self.stopped = False
        self.listener = loop.create_task(self._listen())

    def post(self, add: Add, done: Done) -> None:
        """Send an op from the loop's thread (see :meth:`LoopSender.post`)."""
        self.sender.post(add, done)

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
        """Stop the listener and the sender; safe from any thread."""
        self.stopped = True
        try:
            self.loop.call_soon_threadsafe(self._stop)
        except RuntimeError:  # loop already closed
            pass

    def _stop(self) -> None:
        self.listener.cancel()
        self.sender.close()
