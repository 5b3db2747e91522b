"""Replica side of streamed calls: drive the user's generator into the response stream.

A sync generator runs on the Dramatiq worker thread that took the request (the
replica's thread pool); an async generator runs on the replica's event loop. Either
way items go to a :class:`StreamWriter`, which writes them from the loop, and the
generator is closed as soon as the reader stops early.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from broker import codec
from broker.queue import STREAMED
from broker.streams import ANNOUNCE, END, ERROR, ITEMS, encode_items

from . import bridge

logger = logging.getLogger("mqserve.replica")

#: Seconds between two checks of the cancel flag while a generator yields nothing.
CANCEL_CHECK_S = 0.5


class Sink(Protocol):
    """Where a writer's entries go: :class:`broker.streams.StreamSink` (Redis) in a
    replica, an in-memory fake in unit tests."""

    async def write(self, entries: list[tuple[bytes, bytes]]) -> bool: ...

    async def stop_requested(self) -> bool: ...

    async def drop(self) -> None: ...


class StreamWriter:
    """Writes one response's stream from an event loop; fed from any thread.

    Items put while a write is in flight travel together in the next one, so a fast
    generator costs one round trip per batch, and a slow one still sends each item at
    once. ``on_cancel`` is called (on the loop) once the reader has asked to stop.
    """

    def __init__(self, sink: Sink, loop: asyncio.AbstractEventLoop,
                 on_cancel: Callable[[], object] | None = None) -> None:
        self.sink = sink
        self.loop = loop
        self.on_cancel = on_cancel
        self.lock = threading.Lock()
        self.entries: list[tuple[bytes, bytes]] = []  # (kind, payload) waiting to be written
        self.items: list[Any] = []
        self.finished = False
        self.cancelled = False
        self.wake = asyncio.Event()
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()
        bridge.submit(loop, self._run())

    # Producer side (any thread) -----------------------------------------------------------
    def announce(self, outcome: bytes) -> None:
        """Reply to the caller now (it learns the response streams), before any item."""
        self._add(lambda: self.entries.append((ANNOUNCE, outcome)))

    def put(self, item: Any) -> bool:
        """Queue an item; True if the writer was idle (it has just been woken)."""
        return self._add(lambda: self.items.append(item))

    def finish(self, error: bytes | None = None) -> None:
        """End the stream, with an encoded error outcome if the generator raised."""
        def add() -> None:
            self._flush_items()
            self.entries.append((ERROR, error) if error is not None else (END, b"1"))
            self.finished = True

        self._add(add)

    def _add(self, change: Callable[[], None]) -> bool:
        with self.lock:
            idle = not self.entries and not self.items and not self.finished
            change()
        if idle:
            if bridge.running_loop() is self.loop:
                self.wake.set()
            else:
                self.loop.call_soon_threadsafe(self.wake.set)
        return idle

    def _flush_items(self) -> None:
        # Caller holds self.lock.
        if self.items:
            self.entries.append((ITEMS, encode_items(self.items)))
            self.items = []

    # Writer side (the loop) ----------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while True:
                try:
                    await asyncio.wait_for(self.wake.wait(), CANCEL_CHECK_S)
                except asyncio.TimeoutError:
                    if await self.sink.stop_requested():
                        self._cancel()
                    continue
                self.wake.clear()
                with self.lock:
                    self._flush_items()
                    entries, self.entries = self.entries, []
                    finished = self.finished
                if self.cancelled:  # nobody reads any more: drop what is left
                    await self.sink.drop()
                elif await self.sink.write(entries):
                    self._cancel()
                    await self.sink.drop()
                if finished:
                    return
        except BaseException as e:
            self.done.set_exception(e)
            raise
        finally:
            if not self.done.done():
                self.done.set_result(None)

    def _cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            if self.on_cancel is not None:
                self.on_cancel()


def not_a_generator(method: str) -> TypeError:
    """Ray's error for ``stream=True`` on a method that returned something else."""
    return TypeError(f"Called method '{method}' with `handle.options(stream=True)` but it did not "
                     "return a generator.")


def drive(result: Any, writer: StreamWriter, loop: asyncio.AbstractEventLoop, method: str,
          to_item: Callable[[Any], Any] = lambda x: x) -> concurrent.futures.Future[bytes]:
    """Send every item of ``result`` to ``writer``: a generator, an async generator, or
    an awaitable of either (an ``async def`` that returns one); the future resolves to
    :data:`STREAMED` once the stream is complete. Runs sync generators here (blocking)."""
    if inspect.isasyncgen(result) or inspect.isawaitable(result):
        outcome: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        pump = _pump_async(result, writer, to_item) if inspect.isasyncgen(result) else \
            _pump_awaited(result, writer, to_item, method)
        task = bridge.submit(loop, pump)
        writer.on_cancel = task.cancel
        task.add_done_callback(lambda _: _chain(writer, outcome))
        return outcome
    if inspect.isgenerator(result):
        try:
            for item in result:
                if writer.put(to_item(item)):
                    # The writer (on the loop thread) was just woken: let it take the GIL
                    # now, so the first item leaves before the generator runs on.
                    time.sleep(0)
                if writer.cancelled:
                    break
        except Exception as e:
            logger.error("method '%s' raised while streaming", method, exc_info=e)
            writer.finish(codec.encode_error(e))
        else:
            writer.finish()
        finally:
            result.close()
        writer.done.result()
        done: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        done.set_result(STREAMED)
        return done
    raise not_a_generator(method)


async def _pump_awaited(awaitable: Any, writer: StreamWriter, to_item: Callable[[Any], Any], method: str) -> None:
    """Await what an ``async def`` returned, then stream it, as Ray does (a sync
    generator it returned is iterated on the loop)."""
    try:
        result = await awaitable
    except asyncio.CancelledError:
        writer.finish()
        raise
    except Exception as e:
        logger.error("method '%s' raised", method, exc_info=e)
        writer.finish(codec.encode_error(e))
        return
    if inspect.isgenerator(result):
        result = _as_async(result)
    elif not inspect.isasyncgen(result):
        writer.finish(codec.encode_error(not_a_generator(method)))
        return
    await _pump_async(result, writer, to_item)


async def _as_async(gen: Any) -> Any:
    try:
        for item in gen:
            yield item
    finally:
        gen.close()


async def _pump_async(agen: Any, writer: StreamWriter, to_item: Callable[[Any], Any]) -> None:
    try:
        async for item in agen:
            writer.put(to_item(item))
    except asyncio.CancelledError:
        writer.finish()  # the reader left; nobody reads the end, but the writer must stop
        raise
    except Exception as e:
        logger.error("a streaming generator raised", exc_info=e)
        writer.finish(codec.encode_error(e))
    else:
        writer.finish()
    finally:
        await agen.aclose()


def _chain(writer: StreamWriter, outcome: concurrent.futures.Future[bytes]) -> None:
    writer.done.add_done_callback(lambda _: outcome.set_result(STREAMED))
