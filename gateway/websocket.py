"""The gateway's side of a WebSocket connection: relay it to the ingress app's replica.

A connection is one request to the app's ingress deployment, queued as any request is
(``options["socket"]``), that runs for the connection's life. Its messages travel over
two Redis Streams (``broker.sockets``): the gateway writes what the client sends to
``in``, and sends the client what the replica writes to ``out``. The handshake waits
for the app: its ``websocket.accept`` accepts the client, a close before it refuses the
client (HTTP 403), and a request that ends before either (refused, or the app raised or
returned) gets the HTTP answer a request would get (500 for an app that returned, as
uvicorn answers), where the server can send one (the ASGI ``websocket.http.response``
extension; else 403).

How a connection ends:

- the app closes: its close code goes to the client (1000 if it returned without one,
  1011 if it raised);
- the client leaves: its disconnect is the app's next ``receive()``; a handler that has
  not returned :data:`DISCONNECT_GRACE_S` later is cancelled (Ray Serve cancels it too);
- the replica dies: its request fails (a WebSocket is never run again) and the client
  gets 1011.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from actors.exceptions import BackPressureError, DeploymentUnavailableError
from actors.runtime import bridge
from actors.runtime.websocket import INTERNAL_ERROR, NORMAL_CLOSURE, Outbox
from broker import codec, sockets
from broker.streams import Cursor

from . import failures
from .failures import CLIENT_CLOSED_REQUEST, Answer
from .routing import Route

if TYPE_CHECKING:
    from .app import Gateway, Receive, Scope, Send

#: Seconds a handler may run on after its client left before the gateway cancels it.
DISCONNECT_GRACE_S = 1.0
#: The HTTP status counted for an accepted connection (the handshake's).
SWITCHING_PROTOCOLS = 101
_DENIAL = "websocket.http.response"


async def relay(gateway: Gateway, scope: Scope, receive: Receive, send: Send, route: Route) -> int:
    """Serve one connection until it ends; its HTTP status (101 if accepted)."""
    first = await receive()
    if first["type"] != "websocket.connect":
        return CLIENT_CLOSED_REQUEST
    return await _Relay(gateway, scope, send, route).run(first, receive)


class _Relay:
    """One connection: its request, its two streams, and what the client was sent."""

    def __init__(self, gateway: Gateway, scope: Scope, send: Send, route: Route) -> None:
        assert gateway.client is not None
        self.client, self.scope, self.send, self.route = gateway.client, scope, send, route
        self.req_id, headers, self.request_id = gateway.identify(scope)
        self.message, self.model = gateway.message(scope, route, self.req_id, headers, self.request_id,
                                                   type="websocket", subprotocols=list(scope.get("subprotocols", ())))
        self.streams = sockets.Streams(gateway.aio, gateway.keys, self.req_id, ttl_ms=gateway.result_ttl_ms)
        self.accepted = False

    async def run(self, first: sockets.Message, receive: Receive) -> int:
        inbound = Outbox(self.streams, self.streams.inbound)
        await inbound.put(dict(first))  # the app's first receive()
        outcome = bridge.follow(self.client.submit(self.route.app, self.route.ingress, self.req_id, self.message,
                                                   model=self.model))
        down = asyncio.ensure_future(self._downstream(outcome))
        up = asyncio.ensure_future(_upstream(receive, inbound))
        try:
            await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
            if down.done():
                return down.result()
            # The client left; the app reads its disconnect next, and is cancelled if it goes on.
            await asyncio.wait({outcome}, timeout=DISCONNECT_GRACE_S)
            if not outcome.done():
                self.client.cancel(self.route.app, self.route.ingress, self.req_id, self.message)
            return SWITCHING_PROTOCOLS if self.accepted else CLIENT_CLOSED_REQUEST
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            try:
                await self.streams.drop()
            except Exception:  # Redis unreachable: the streams expire
                pass

    async def _downstream(self, outcome: asyncio.Future[bytes]) -> int:
        """The app's messages from ``out`` to the client, until its close; or, if the
        request ends without one (it failed), its answer. The connection's HTTP status."""
        cursor = Cursor(self.streams.outbound)
        while True:
            ended = outcome.done()
            if ended:  # whatever the app sent before its request ended is written by now
                messages = await self.streams.read(cursor, block=False)
            else:
                read = asyncio.ensure_future(self.streams.read(cursor))
                either: set[asyncio.Future[Any]] = {read, outcome}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    read.cancel()
                    await asyncio.gather(read, return_exceptions=True)
                    continue
                messages = read.result()
            for message in messages:
                self.accepted = self.accepted or message["type"] == "websocket.accept"
                await self.send(message)
                if message["type"] == "websocket.close":
                    return SWITCHING_PROTOCOLS if self.accepted else 403
            if ended:
                return await self._ended(outcome)

    async def _ended(self, outcome: asyncio.Future[bytes]) -> int:
        """The request ended without the app's close: it was refused, or failed."""
        answer: Answer | None = None
        try:
            ok, value = codec.decode_outcome(outcome.result())
            if not ok:
                answer = failures.failed(self.request_id, self.route.app, value)
        except (BackPressureError, DeploymentUnavailableError, ConnectionError) as e:
            answer = failures.refused(e)
        if self.accepted:
            code = NORMAL_CLOSURE if answer is None else INTERNAL_ERROR
            await self.send({"type": "websocket.close", "code": code, "reason": ""})
            return SWITCHING_PROTOCOLS
        # As uvicorn answers an app that returned without a handshake.
        return await deny(self.scope, self.send, answer or Answer(500, "The application returned without "
                                                                       "accepting or closing the connection."))


async def _upstream(receive: Receive, inbound: Outbox) -> None:
    """The client's messages to ``in``, until its disconnect (written too)."""
    while True:
        message = await receive()
        await inbound.put(dict(message))
        if message["type"] == "websocket.disconnect":
            await inbound.flush()
            return


async def deny(scope: Scope, send: Send, answer: Answer) -> int:
    """Refuse a connection before its handshake: ``answer`` as an HTTP response if the
    server can send one, else a close (which the server answers with 403)."""
    if _DENIAL not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1000, "reason": ""})
        return 403
    return await failures.send_answer(send, answer, _DENIAL)
