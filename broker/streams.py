"""Streamed responses over Redis Streams: the writer's commands and the caller's reader.

A streamed response has a stream key of its own (``keys.stream(req_id)``). Entries are

- ``d``: a pickled list of items; items produced while the previous write was in
  flight travel together, so a fast generator costs one round trip per batch, not per
  item, and a slow one still sends each item at once;
- ``e``: an encoded error outcome (the generator raised), last;
- ``end``: the generator finished, last.

The stream expires with the result TTL; the reader deletes it when it has read the end.
A reader that stops early sets the request's cancel flag, which the writer checks on
every write and from time to time while the generator is quiet. The writer itself (its
loop, its batching) is the replica runtime's (``actors.runtime.streaming``); it issues
its commands through a :class:`StreamSink`.
"""

from __future__ import annotations

import pickle
from typing import Any

from . import scripts
from .codec import dumps, seal, unseal
from .keys import Keys

ITEMS = b"d"
ERROR = b"e"
END = b"end"

#: Milliseconds a reader blocks in XREAD before checking whether it should stop.
READ_BLOCK_MS = 1000
#: Most entries one XREAD returns.
READ_COUNT = 256


#: Not a stream entry: a writer's early reply to the caller's inbox (the head of an HTTP
#: response), sent in the same round trip as the entries that follow it.
ANNOUNCE = b"announce"


def encode_items(items: list[Any]) -> bytes:
    """The payload of an ``ITEMS`` entry (:func:`decode_items` reads it)."""
    return seal(dumps(items))


class StreamSink:
    """The Redis commands of one response stream's writer, on a ``redis.asyncio`` client."""

    def __init__(self, client: Any, keys: Keys, req_id: str, *, inbox: str, ttl_ms: int) -> None:
        self.client = client
        self.req_id = req_id
        self.inbox = inbox
        self.key = keys.stream(req_id)
        self.cancel_key = keys.cancelled(req_id)
        self.ttl_ms = ttl_ms

    async def write(self, entries: list[tuple[bytes, bytes]]) -> bool:
        """Add ``entries`` (kind, payload) and renew the stream's TTL in one round trip;
        True if the reader has asked to stop."""
        pipe = self.client.pipeline(transaction=False)
        for kind, payload in entries:
            if kind == ANNOUNCE:
                pipe.lpush(self.inbox, self.req_id.encode() + payload)
                pipe.pexpire(self.inbox, self.ttl_ms)
            else:
                pipe.xadd(self.key, {kind: payload})
        pipe.pexpire(self.key, self.ttl_ms)
        pipe.exists(self.cancel_key)
        results = await pipe.execute()
        return bool(results[-1])

    async def stop_requested(self) -> bool:
        """Whether the reader has asked to stop (checked while the generator is quiet)."""
        return bool(await self.client.exists(self.cancel_key))

    async def drop(self) -> None:
        """Delete the stream: nobody reads it any more."""
        await self.client.delete(self.key)


class Cursor:
    """Where a reader is in one stream (a response's, or a WebSocket direction's). It
    sends nothing itself, so that the thread and the event-loop readers share it: pass
    :meth:`xread_args` to XREAD on either client, and its reply to :meth:`entries`."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.last: str | bytes = "0-0"  # then the id of the last entry read

    def xread_args(self, block_ms: int | None = READ_BLOCK_MS) -> dict[str, Any]:
        """The next XREAD: entries after the last one read, blocking up to ``block_ms``
        (None: not at all)."""
        return {"streams": {self.key: self.last}, "count": READ_COUNT, "block": block_ms}

    def entries(self, response: Any) -> list[dict[bytes, bytes]]:
        """The entries (field dicts) of an XREAD reply, in order; the next read starts after them."""
        fields: list[dict[bytes, bytes]] = []
        for _, entries in response or ():
            for entry_id, entry in entries:
                self.last = entry_id
                fields.append(entry)
        return fields


def decode_items(payload: bytes) -> list[Any]:
    items: list[Any] = pickle.loads(unseal(payload))
    return items


def stop_reading(batch: scripts.Batch, keys: Keys, req_id: str, *, cancel: bool, ttl_ms: int) -> None:
    """Delete the stream; if the reader stops early, also ask the writer to stop."""
    if cancel:
        batch.command("set", keys.cancelled(req_id), 1, px=ttl_ms)
    batch.command("delete", keys.stream(req_id))
