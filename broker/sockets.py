"""WebSocket connections over Redis Streams: the entries and the commands of both sides.

A WebSocket connection through the gateway is one request to the ingress deployment,
and two streams of its own (``keys.socket(conn_id, "in"|"out")``):

- ``in``: what the client sent, written by the gateway, read by the replica;
- ``out``: what the app sent, written by the replica, read by the gateway.

Each entry is one ASGI message, stored as plain fields: ``k``, the message type without
its ``websocket.`` prefix (``connect``, ``receive``, ``disconnect`` in; ``accept``,
``send``, ``close`` out); ``t`` or ``b``, the text or bytes of a message; ``c`` and
``r``, a close code and reason; ``p`` and ``h``, an accept's subprotocol and headers
(JSON). Nothing is pickled, so nothing a client sent is ever unpickled, and a stream
keeps its order, so messages arrive as they were sent.

Both streams expire (each write renews them) and the gateway deletes them when the
connection ends; a replica deletes ``in`` when its handler returns, and both if the
connection was cancelled (the gateway reads no more).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .keys import Keys
from .streams import Cursor

#: An ASGI WebSocket message.
Message = dict[str, Any]

PREFIX = "websocket."
#: Milliseconds a reader blocks in XREAD before it checks that its peer is still there.
READ_BLOCK_MS = 2000


def fields_of(message: Mapping[str, Any]) -> dict[bytes, bytes]:
    """The stream entry of one ASGI WebSocket message."""
    kind = str(message["type"]).removeprefix(PREFIX)
    fields = {b"k": kind.encode()}
    if message.get("bytes") is not None:
        fields[b"b"] = bytes(message["bytes"])
    elif message.get("text") is not None:
        fields[b"t"] = str(message["text"]).encode()
    if message.get("code") is not None:
        fields[b"c"] = str(int(message["code"])).encode()
    if message.get("reason"):
        fields[b"r"] = str(message["reason"]).encode()
    if message.get("subprotocol"):
        fields[b"p"] = str(message["subprotocol"]).encode()
    if message.get("headers"):
        fields[b"h"] = json.dumps([[bytes(k).decode("latin-1"), bytes(v).decode("latin-1")]
                                   for k, v in message["headers"]]).encode()
    return fields


def message_of(fields: Mapping[bytes, bytes]) -> Message:
    """The ASGI message of one stream entry (:func:`fields_of`'s inverse)."""
    kind = fields[b"k"].decode()
    message: Message = {"type": PREFIX + kind}
    if kind in ("receive", "send"):
        message["bytes"] = fields.get(b"b")
        message["text"] = fields[b"t"].decode() if b"t" in fields else None
    elif kind in ("close", "disconnect"):
        message["code"] = int(fields.get(b"c", b"1000"))
        message["reason"] = fields.get(b"r", b"").decode()
    elif kind == "accept":
        message["subprotocol"] = fields[b"p"].decode() if b"p" in fields else None
        message["headers"] = [(k.encode("latin-1"), v.encode("latin-1"))
                              for k, v in json.loads(fields.get(b"h", b"[]"))]
    return message


class Streams:
    """The two streams of one connection, on a ``redis.asyncio`` client (an event loop's)."""

    def __init__(self, client: Any, keys: Keys, conn_id: str, *, ttl_ms: int) -> None:
        self.client = client
        self.inbound = keys.socket(conn_id, "in")
        self.outbound = keys.socket(conn_id, "out")
        self.ttl_ms = ttl_ms

    async def write(self, key: str, messages: list[Message]) -> None:
        """Append ``messages`` to the stream ``key`` and renew its TTL, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for message in messages:
            pipe.xadd(key, fields_of(message))
        pipe.pexpire(key, self.ttl_ms)
        await pipe.execute()

    async def read(self, cursor: Cursor, *, block: bool = True) -> list[Message]:
        """The messages after ``cursor`` (waiting up to :data:`READ_BLOCK_MS` for one if
        ``block``); [] if none came."""
        reply = await self.client.xread(**cursor.xread_args(READ_BLOCK_MS if block else None))
        return [message_of(fields) for fields in cursor.entries(reply)]

    async def alive(self, inbox: str) -> bool:
        """Whether the process of the caller's ``inbox`` still lives (its listener's key)."""
        return bool(await self.client.exists(Keys.alive(inbox)))

    async def drop(self, *, both: bool = True) -> None:
        """Delete ``in`` (and ``out`` if ``both``): nobody will read them again."""
        await self.client.delete(self.inbound, *((self.outbound,) if both else ()))
