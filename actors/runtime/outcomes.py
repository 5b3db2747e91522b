"""The outcomes of requests, many per round trip.

Every message is deferred: Dramatiq's ack (on the consumer's thread, the one that takes
messages) leaves it alone, and it keeps its slot in the consumer until its outcome is
written. That write happens where the outcome resolves:

- on an event loop (an async method, an async generator, an HTTP request): from that
  loop, with an asyncio connection of its own, every outcome resolved during one step
  of the loop in one round trip (no thread hop);
- anywhere else: by the writer's thread, every outcome ready by the time it writes in
  one round trip. A sync method's outcome is ready when its actor returns; writing it
  on the consumer's ack instead cost a round trip per message on the thread that takes
  messages. The thread also writes a cancellation heard on the events thread, and any
  write the loop found Redis unreachable for, retrying until Redis is back.

The Redis side (``complete.lua``, freeing the slots) is :class:`broker.queue.ServeBroker`'s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any

from broker.connection import connect_async
from broker.queue import Done, ServeBroker

from . import bridge

logger = logging.getLogger("mqserve.replica")

#: Seconds the writer's thread waits before it tries Redis again.
RETRY_S = 1.0


class OutcomeWriter:
    """Writes each request's outcome once it is known, with the others known by then."""

    def __init__(self, broker: ServeBroker) -> None:
        self.broker = broker
        self._pending: list[Done] = []
        self._cond = threading.Condition()
        self._closed = False
        self._batches: dict[asyncio.AbstractEventLoop, bridge.StepBatch[Done]] = {}
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}
        self._writes: set[asyncio.Task[None]] = set()  # asyncio keeps only weak references to tasks
        self._thread = threading.Thread(target=self._run, name="mqserve-completer", daemon=True)
        self._thread.start()

    def settle(self, message: Any, outcome: concurrent.futures.Future[bytes]) -> None:
        """Called by the actor: the message is deferred until its outcome is written, by
        the writer's thread if it is ready (with the others ready), else where it resolves."""
        message.deferred = True  # before the actor returns: the ack must leave it alone
        if outcome.done():  # a sync method's: the writer's thread writes it, with the others ready
            self._to_thread([(message, outcome.result())])
            return
        outcome.add_done_callback(lambda future: self.post(message, future.result()))

    def post(self, message: Any, outcome: bytes) -> None:
        """Write ``outcome`` of a deferred ``message``, from whichever thread resolved it."""
        loop = bridge.running_loop()
        if loop is None:
            self._to_thread([(message, outcome)])
            return
        batch = self._batches.get(loop)
        if batch is None:
            batch = self._batches[loop] = bridge.StepBatch(loop, lambda done: self._write_soon(loop, done))
        batch.post((message, outcome))

    def _write_soon(self, loop: asyncio.AbstractEventLoop, done: list[Done]) -> None:
        task = loop.create_task(self._write_on_loop(loop, done))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write_on_loop(self, loop: asyncio.AbstractEventLoop, done: list[Done]) -> None:
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = connect_async(self.broker.url)
        if not await self.broker.complete_async(client, done):
            self._to_thread(done)  # the thread retries until Redis is back

    def _to_thread(self, done: list[Done]) -> None:
        with self._cond:
            self._pending.extend(done)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                done, self._pending = self._pending, []
            if not self.broker.complete(done):
                logger.warning("mqserve: Redis unreachable while writing %d outcome(s); retrying", len(done))
                with self._cond:
                    self._pending[:0] = done
                    self._cond.wait(RETRY_S)

    def close(self) -> None:
        """Write what the thread still holds, then close the loops' connections."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)
        for loop, client in self._clients.items():
            try:
                bridge.submit(loop, client.aclose()).result(timeout=2)
            except Exception:  # the loop is already gone
                pass
