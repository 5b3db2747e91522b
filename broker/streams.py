"""Streamed responses over Redis Streams: the replica's writer and the caller's reader.

A streamed response has a stream key of its own (``keys.stream(req_id)``). Entries are

- ``d``: a pickled list of items; items produced while the previous write was in
  flight travel together, so a fast generator costs one round trip per batch, not per
  item, and a slow one still sends each item at once;
- ``e``: an encoded error outcome (the generator raised), last;
- ``end``: the generator finished, last.

The stream expires with the result TTL; the reader deletes it when it has read the end.
A reader that stops early sets the request's cancel flag, which the writer checks on
every write and every :data:`CANCEL_CHECK_S` while the generator is quiet.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from typing import Any

import redis

from .codec import dumps, seal, unseal
from .keys import Keys

ITEMS = b"d"
ERROR = b"e"
END = b"end"

#: Seconds between two checks of the cancel flag while a generator yields nothing.
CANCEL_CHECK_S = 0.5
#: Milliseconds a reader blocks in XREAD before checking whether it should stop.
READ_BLOCK_MS = 1000
#: Most entries one XREAD returns.
READ_COUNT = 256


class StreamWriter:
    """Writes one response's stream from an event loop; fed from any thread.

    ``on_cancel`` is called (on the loop) once the reader has asked to stop.
    """

    def __init__(self, client: Any, keys: Keys, req_id: str, loop: asyncio.AbstractEventLoop,
                 ttl_ms: int, on_cancel: Callable[[], object] | None = None, inbox: str = "") -> None:
        self.client = client  # a redis.asyncio client bound to ``loop``
        self.req_id = req_id
        self.inbox = inbox
        self.key = keys.stream(req_id)
        self.cancel_key = keys.cancelled(req_id)
        self.loop = loop
        self.ttl_ms = ttl_ms
        self.on_cancel = on_cancel
        self.lock = threading.Lock()
        self.entries: list[tuple[bytes, Any]] = []  # (kind, payload) waiting to be written
        self.items: list[Any] = []
        self.finished = False
        self.cancelled = False
        self.wake = asyncio.Event()
        self.done: Future[None] = Future()
        asyncio.run_coroutine_threadsafe(self._run(), loop)

    # Producer side (any thread) -----------------------------------------------------------
    def announce(self, outcome: bytes) -> None:
        """Reply to the caller now (it learns the response streams), before any item."""
        self._add(lambda: self.entries.append((b"announce", outcome)))

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
            if _on_loop(self.loop):
                self.wake.set()
            else:
                self.loop.call_soon_threadsafe(self.wake.set)
        return idle

    def _flush_items(self) -> None:
        # Caller holds self.lock.
        if self.items:
            self.entries.append((ITEMS, seal(dumps(self.items))))
            self.items = []

    # Writer side (the loop) ----------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while True:
                try:
                    await asyncio.wait_for(self.wake.wait(), CANCEL_CHECK_S)
                except asyncio.TimeoutError:
                    if await self.client.exists(self.cancel_key):
                        self._cancel()
                    continue
                self.wake.clear()
                with self.lock:
                    self._flush_items()
                    entries, self.entries = self.entries, []
                    finished = self.finished
                if self.cancelled:  # nobody reads any more: drop what is left
                    await self.client.delete(self.key)
                    if finished:
                        return
                    continue
                pipe = self.client.pipeline(transaction=False)
                for kind, payload in entries:
                    if kind == b"announce":
                        pipe.lpush(self.inbox, self.req_id.encode() + payload)
                        pipe.pexpire(self.inbox, self.ttl_ms)
                    else:
                        pipe.xadd(self.key, {kind: payload})
                pipe.pexpire(self.key, self.ttl_ms)
                pipe.exists(self.cancel_key)
                results = await pipe.execute()
                if results[-1]:
                    self._cancel()
                    await self.client.delete(self.key)
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


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _entries(response: Any) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
    for _, entries in response or ():
        yield from entries


def read(client: redis.Redis, keys: Keys, req_id: str,
         stopped: Callable[[], bool]) -> Iterator[dict[bytes, bytes]]:
    """Yield a stream's entries (field dicts) as they arrive, blocking in XREAD."""
    last: str | bytes  # "0-0", then the id of the last entry read
    key, last = keys.stream(req_id), "0-0"
    while not stopped():
        response = client.xread({key: last}, count=READ_COUNT, block=READ_BLOCK_MS)
        for entry_id, fields in _entries(response):
            last = entry_id
            yield fields


async def read_async(client: Any, keys: Keys, req_id: str,
                     stopped: Callable[[], bool]) -> AsyncIterator[dict[bytes, bytes]]:
    """The same on a ``redis.asyncio`` client."""
    last: str | bytes  # "0-0", then the id of the last entry read
    key, last = keys.stream(req_id), "0-0"
    while not stopped():
        response = await client.xread({key: last}, count=READ_COUNT, block=READ_BLOCK_MS)
        for entry_id, fields in _entries(response):
            last = entry_id
            yield fields


def decode_items(payload: bytes) -> list[Any]:
    items: list[Any] = pickle.loads(unseal(payload))
    return items


def stop_reading(client: redis.Redis, keys: Keys, req_id: str, *, cancel: bool, ttl_ms: int) -> None:
    """Delete the stream; if the reader stops early, also ask the writer to stop."""
    pipe = client.pipeline(transaction=False)
    if cancel:
        pipe.set(keys.cancelled(req_id), 1, px=ttl_ms)
    pipe.delete(keys.stream(req_id))
    pipe.execute()


async def stop_reading_async(client: Any, keys: Keys, req_id: str, *, cancel: bool, ttl_ms: int) -> None:
    pipe = client.pipeline(transaction=False)
    if cancel:
        pipe.set(keys.cancelled(req_id), 1, px=ttl_ms)
    pipe.delete(keys.stream(req_id))
    await pipe.execute()
