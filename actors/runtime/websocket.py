"""WebSockets on a replica: run the ingress app on a connection's two streams.

The gateway turns a WebSocket connection into one request to the ingress deployment
(``options["socket"]``) and relays the client's ASGI messages into the connection's
``in`` stream, and the app's from its ``out`` stream (``broker.sockets``). Here the
app runs as under any ASGI server: ``receive()`` reads ``in``, ``send()`` writes ``out``.
The request holds a slot of the replica (``max_ongoing_requests``) for the connection's
life, as a WebSocket does on Ray Serve.

- The app's close (or its return, 1000; or its error, 1011) is the last entry of ``out``.
  An app that returns or raises before it accepts closes nothing: the gateway answers
  the handshake with HTTP 500, as uvicorn does.
- The client's disconnect is the last entry of ``in``: ``receive()`` returns it, and a
  ``send()`` after it raises :class:`ClientDisconnected` (Starlette raises
  ``WebSocketDisconnect`` from it). A handler that reads nothing is cancelled by the
  gateway soon after.
- A gateway that dies says nothing: a reader that waited :data:`broker.sockets.READ_BLOCK_MS`
  in vain checks that the gateway's process lives, and reports a disconnect (1006) if not.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from broker import codec, sockets
from broker.errors import MQServeError
from broker.sockets import Message
from broker.streams import Cursor

from . import http

#: Messages an :class:`Outbox` holds before ``put`` waits for Redis (back pressure).
OUTBOX_LIMIT = 256
#: The close codes of a handler that returned without closing, and of one that raised.
NORMAL_CLOSURE, INTERNAL_ERROR = 1000, 1011
#: The code a disconnect has when the gateway's process is gone (no close frame was seen).
ABNORMAL_CLOSURE = 1006
#: What the app may send, as an ASGI server allows.
_APP_MESSAGES = frozenset({"websocket.accept", "websocket.send", "websocket.close"})


class ClientDisconnected(MQServeError, OSError):
    """The app sent a message after the client had left (an ``OSError``, as uvicorn's, so
    Starlette turns it into ``WebSocketDisconnect``)."""


class Outbox:
    """Writes messages to one stream, in order, from an event loop. Those put while a
    write is in flight go together in the next one: a fast sender costs one round trip
    per batch, and a slow one still sends each message at once."""

    def __init__(self, streams: sockets.Streams, key: str) -> None:
        self.streams, self.key = streams, key
        self.pending: list[Message] = []
        self.writing: asyncio.Future[None] | None = None
        self.error: BaseException | None = None

    async def put(self, message: Message) -> None:
        """Queue ``message``; waits only while :data:`OUTBOX_LIMIT` are queued. Raises the
        error of an earlier write that failed (Redis unreachable)."""
        if self.error is not None:
            raise self.error
        self.pending.append(message)
        if self.writing is None or self.writing.done():
            self.writing = asyncio.ensure_future(self._write())
        if len(self.pending) >= OUTBOX_LIMIT:
            await self.flush()

    async def flush(self) -> None:
        """Wait until everything put is written."""
        while self.writing is not None and not self.writing.done():
            await asyncio.shield(self.writing)
        if self.error is not None:
            raise self.error

    async def _write(self) -> None:
        while self.pending and self.error is None:
            batch, self.pending = self.pending, []
            try:
                await self.streams.write(self.key, batch)
            except Exception as e:
                self.error = e


async def serve(app: Any, snapshot: dict[str, Any], streams: sockets.Streams, inbox: str) -> bytes:
    """Run ``app`` on one connection; the request's outcome is the close code sent.
    ``inbox``: the gateway's, whose liveness tells whether the client can still be there."""
    connection = _Connection(streams, inbox)
    try:
        await app(http.build_scope(snapshot, "websocket"), connection.receive, connection.send)
    except asyncio.CancelledError:
        await streams.drop()  # the gateway left: nobody reads either stream again
        raise
    except Exception:
        await connection.end(INTERNAL_ERROR)
        raise
    await connection.end(NORMAL_CLOSURE)
    return codec.encode_value(("websocket", connection.close_code))


class _Connection:
    """The ``receive`` and ``send`` of one connection's app."""

    def __init__(self, streams: sockets.Streams, inbox: str) -> None:
        self.streams, self.inbox = streams, inbox
        self.cursor = Cursor(streams.inbound)
        self.received: collections.deque[Message] = collections.deque()
        self.outbox = Outbox(streams, streams.outbound)
        self.accepted = False
        self.close_code: int | None = None  # the app's close
        self.disconnect: Message | None = None  # the client's

    async def receive(self) -> Message:
        if self.disconnect is not None:
            return self.disconnect
        if self.close_code is not None:
            return {"type": "websocket.disconnect", "code": self.close_code, "reason": ""}
        while not self.received:
            got = await self.streams.read(self.cursor)
            if not got and not await self.streams.alive(self.inbox):
                got = [{"type": "websocket.disconnect", "code": ABNORMAL_CLOSURE, "reason": ""}]
            self.received.extend(got)
        message = self.received.popleft()
        if message["type"] == "websocket.disconnect":
            self.disconnect = message
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind not in _APP_MESSAGES:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' on a WebSocket: expected one of "
                               f"{sorted(_APP_MESSAGES)}.")
        if self.close_code is not None:
            raise RuntimeError(f"Unexpected ASGI message '{kind}', after sending 'websocket.close'.")
        if self.disconnect is not None:
            raise ClientDisconnected(f"the client disconnected (code {self.disconnect['code']})")
        self.accepted = self.accepted or kind == "websocket.accept"
        if kind == "websocket.close":
            self.close_code = int(message.get("code") or NORMAL_CLOSURE)
        await self.outbox.put(dict(message))

    async def end(self, code: int) -> None:
        """The app returned (or raised): close with ``code`` unless it closed (or never
        accepted: the gateway answers with an HTTP error then), write what is left, and
        stop reading."""
        try:
            if self.accepted and self.close_code is None and self.disconnect is None:
                self.close_code = code
                await self.outbox.put({"type": "websocket.close", "code": code, "reason": ""})
            await self.outbox.flush()
        finally:
            await self.streams.drop(both=False)
