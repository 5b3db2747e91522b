"""The HTTP gateway: a Starlette app that forwards requests to ingress deployments.

It holds no state but Redis: routes come from the registry (reloaded on every app
change event, and on a miss), requests go through the same queues as handle calls.
It never unpickles what a client sent: the request is forwarded as plain values (method,
path, headers, body bytes) and rebuilt on the replica.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route as StarletteRoute

from actors.config import DEFAULT_MAX_BODY_BYTES
from actors.exceptions import BackPressureError, DeploymentUnavailableError
from actors.multiplex import model_id_from_headers
from actors.runtime import background as background_calls
from actors.runtime import bridge
from actors.runtime.caller import CallClient, get_client
from actors.runtime.controller import MEMBER_TTL_MS, ControllerLoop
from actors.status import collect_status
from broker import clock, codec, counts, stats, streams
from broker.connection import connect, connect_async
from broker.keys import Keys
from broker.registry import Registry

from . import background, failures, websocket
from .dashboard import Dashboard
from .failures import CLIENT_CLOSED_REQUEST, Answer, ResponseAborted, send_answer
from .metrics import DeploymentFigures, Metrics
from .routing import Route, RouteTable
from .watch import DONE, LEFT, TIMED_OUT, ClientWatch

logger = logging.getLogger("mqserve.gateway")

#: Seconds between route reloads when no change event arrives.
ROUTE_RELOAD_S = 5.0
#: The header carrying a request's user-visible id, in and out (Ray's ``x-request-id``).
REQUEST_ID_HEADER = b"x-request-id"
#: What ``/-/healthz`` and ``/-/routes`` answer (503) until an application has a route
#: (Ray Serve's words, which health checks of ported deployments may match).
NOT_READY = "Route table is not populated yet."
#: What :meth:`Gateway._body` returns when the client disconnects before the body's end.
_DISCONNECTED = b"<disconnected>"
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]  # as in ASGI (and Starlette): any mapping


class Gateway:
    """Routes, client and counters of one gateway process."""

    def __init__(self, url: str, namespace: str, *, result_ttl_ms: int, max_body_bytes: int,
                 timeout_s: float | None, address: tuple[str, int] = ("", 0)) -> None:
        self.keys = Keys(namespace)
        self.address = address
        self.gateway_id = f"gateway-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.url = url
        self.result_ttl_ms = result_ttl_ms
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s
        self.registry = Registry(connect(url), self.keys)
        self.routes = RouteTable()
        self.ready = False
        self.metrics = Metrics()
        self.client: CallClient | None = None
        self.aio: Any = None  # a redis.asyncio client on the server's loop (WebSocket streams)
        self.stopped = threading.Event()

    # Routes ----------------------------------------------------------------------------
    async def reload(self) -> None:
        self.routes = RouteTable(await bridge.run_sync(self.registry.apps))
        # Ready once the table had a route, and from then on, as Ray's proxy: a gateway
        # behind a load balancer takes traffic only when it can route some.
        self.ready = self.ready or bool(self.routes.routes)

    def _watch_events(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reload the routes whenever an app changes, and every :data:`ROUTE_RELOAD_S`
        (a thread: pub/sub blocks)."""
        self.registry.follow(lambda _: bridge.submit(loop, self.reload()), self.stopped,
                             every_s=ROUTE_RELOAD_S, what="route changes")

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.client = get_client(self.url, self.keys, result_ttl_ms=self.result_ttl_ms)
        self.aio = connect_async(self.url, client_name=self.gateway_id)
        await self.reload()
        threading.Thread(target=self._watch_events, args=(asyncio.get_running_loop(),), daemon=True).start()
        # Any gateway may run the controller, so a cluster whose workers all died recovers
        # as soon as one comes back.
        record = {"host": self.address[0], "port": self.address[1], "pid": os.getpid(),
                  "hostname": socket.gethostname()}
        controller = ControllerLoop(
            self.url, self.keys.ns, self.gateway_id, result_ttl_ms=self.result_ttl_ms,
            heartbeat=lambda reg: reg.register_gateway(self.gateway_id, record, MEMBER_TTL_MS)).start()
        yield
        self.stopped.set()
        await bridge.run_sync(controller.stop)
        try:
            await bridge.run_sync(self.registry.remove_gateway, self.gateway_id)
        except Exception:
            pass  # Redis may be gone already
        await self.aio.aclose()

    # Endpoints ----------------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        if not self.ready:
            return PlainTextResponse(NOT_READY, status_code=503)
        return PlainTextResponse("success")

    async def list_routes(self, request: Request) -> Response:
        if not self.ready:
            return PlainTextResponse(NOT_READY, status_code=503)
        return JSONResponse(self.routes.as_dict())

    async def metrics_text(self, request: Request) -> Response:
        status = await bridge.run_sync(collect_status, self.registry)
        deployments = [(app, name) for app, overview in status.applications.items() for name in overview.deployments]
        counted = await bridge.run_sync(counts.read, self.registry.redis, self.keys, deployments)
        totals = await bridge.run_sync(stats.read_totals, self.registry.redis, self.keys, deployments)
        figures = [DeploymentFigures(app, name, window) for (app, name), window in zip(deployments, totals)]
        rows = []
        for (app, name), events in zip(deployments, counted):
            dep = status.applications[app].deployments[name]
            rows.append((app, name, dep.queued_requests, dep.ongoing_requests, events.get(counts.EXPIRED, 0)))
        return PlainTextResponse(self.metrics.render(rows, figures), media_type="text/plain; version=0.0.4")

    async def _route(self, path: str) -> Route | None:
        route = self.routes.match(path)
        if route is None:
            await self.reload()  # an app may have just been deployed
            route = self.routes.match(path)
        return route

    # The request path: raw ASGI, as the hot path skips Starlette's request/response objects.
    async def proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.monotonic()
        path = scope["path"]
        route = await self._route(path)
        if route is None:
            await send_answer(send, Answer(404, f"Path '{path}' not found. "
                                                "Ping http://.../-/routes for available routes."))
            return
        status = 500
        self.metrics.ongoing_http += 1
        try:
            status = await self._forward(scope, receive, send, route)
        except ResponseAborted as e:
            status = e.status
            raise
        finally:
            self.metrics.ongoing_http -= 1
            self.metrics.observe(route.app, route.ingress, status, time.monotonic() - start, route=route.prefix,
                                 method=scope["method"])

    async def socket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket connection: relayed to its app's ingress (``gateway.websocket``)."""
        start = time.monotonic()
        route = await self._route(scope["path"])
        if route is None:
            await websocket.deny(scope, send, Answer(404, f"Path '{scope['path']}' not found."))
            return
        status = 500
        try:
            status = await websocket.relay(self, scope, receive, send, route)
        finally:
            self.metrics.observe(route.app, route.ingress, status, time.monotonic() - start)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, route: Route) -> int:
        assert self.client is not None
        req_id, headers, request_id = self.identify(scope)
        send = _answering_with(send, request_id)
        body = await self._body(scope, receive)
        if body is _DISCONNECTED:  # the client left mid-body: never run a truncated request
            return CLIENT_CLOSED_REQUEST
        if body is None:
            return await send_answer(send, Answer(413, f"Request body larger than {self.max_body_bytes} bytes "
                                                 "(MQSERVE_MAX_BODY_BYTES)."))
        if background.prefers_async(scope):
            return await self._submit_background(scope, send, route, req_id, headers, request_id, body)
        message, model = self.message(scope, route, req_id, headers, request_id, method=scope["method"], body=body)
        future = self.client.submit(route.app, route.ingress, req_id, message, model=model)
        client = ClientWatch(receive, self.timeout_s)
        try:
            reply = bridge.follow(future)
            end = await client.wait(reply)
            if end is not DONE:
                # Withdrawn if still queued (it never runs), else cancelled on its replica.
                self.client.cancel(route.app, route.ingress, req_id, message)
                if end is LEFT:
                    return CLIENT_CLOSED_REQUEST
                assert self.timeout_s is not None
                return await send_answer(send, failures.timed_out(request_id, self.timeout_s))
            try:
                outcome = reply.result()
            except (BackPressureError, DeploymentUnavailableError, ConnectionError) as e:
                return await send_answer(send, failures.refused(e))
            ok, value = codec.decode_outcome(outcome)
            if not ok:
                return await send_answer(send, failures.failed(request_id, route.app, value))
            if value[0] == "http":
                _, status, headers, content = value
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": content})
                return int(status)
            _, status, headers = value
            await self._relay_stream(req_id, int(status), headers, send, client)
            return int(status)
        finally:
            client.close()

    async def _submit_background(self, scope: Scope, send: Send, route: Route, req_id: str,
                                 headers: list[tuple[bytes, bytes]], request_id: str, body: bytes) -> int:
        """``Prefer: respond-async``: send it as a background request and answer 202 at
        once (``gateway.background``); a refusal is answered as in the foreground."""
        assert self.client is not None
        ttl_ms = background_calls.ttl_ms()
        message, model = self.message(scope, route, req_id, headers, request_id, background_ttl_ms=ttl_ms,
                                      method=scope["method"], body=body)
        queued = background_calls.submit(self.client, route.app, route.ingress, req_id, message, (),
                                         method=f"{scope['method']} {scope['path']}", ttl_ms=ttl_ms, model=model,
                                         http=True)
        try:
            await bridge.wait(queued)
        except (BackPressureError, DeploymentUnavailableError, ConnectionError) as e:
            return await send_answer(send, failures.refused(e))
        status, answer_headers, content = background.accepted(req_id)
        await send({"type": "http.response.start", "status": status, "headers": answer_headers})
        await send({"type": "http.response.body", "body": content})
        return status

    @staticmethod
    def identify(scope: Scope) -> tuple[str, list[tuple[bytes, bytes]], str]:
        """A new request's (or connection's) id, its headers and its user-visible id."""
        req_id = codec.new_request_id()
        return (req_id, *_with_request_id(scope, req_id))

    def message(self, scope: Scope, route: Route, req_id: str, headers: list[tuple[bytes, bytes]], request_id: str,
                *, background_ttl_ms: int = 0, **fields: Any) -> tuple[bytes, str]:
        """The queued message of a request (``fields``: its method and body) or of a
        WebSocket connection (its subprotocols), and its multiplexed model id. A
        background request (``background_ttl_ms``) has no reply inbox."""
        assert self.client is not None
        snapshot = {
            "path": scope["path"], "root_path": route.root_path, "query_string": scope.get("query_string", b""),
            "headers": headers, "http_version": scope.get("http_version", "1.1"),
            "scheme": scope.get("scheme", "http"), "server": scope.get("server"), "client": scope.get("client"),
            **fields,
        }
        # Only plain values: the replica unpickles this, the gateway never unpickles client data.
        payload = pickle.dumps(((snapshot,), {}), protocol=pickle.HIGHEST_PROTOCOL)
        model = model_id_from_headers(headers)  # routes it, as a handle's multiplexed_model_id
        socket = scope["type"] == "websocket"
        waited = not socket and not background_ttl_ms  # a connection has no request timeout, nor a background request
        deadline_ms = clock.deadline_in(self.timeout_s) if self.timeout_s and waited else 0
        reply_to = "" if background_ttl_ms else self.client.reply_inbox()
        return codec.encode_request(req_id=req_id, method="__call__", payload=payload, reply_to=reply_to, http=True,
                                    socket=socket, model=model, request_id=request_id, deadline_ms=deadline_ms,
                                    background_ttl_ms=background_ttl_ms), model

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _DISCONNECTED
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _relay_stream(self, req_id: str, status: int, headers: list[tuple[bytes, bytes]],
                            send: Send, client: ClientWatch) -> None:
        """Send a streamed response as it comes. A client that leaves, or the request
        timeout, cancels the generator; the timeout, like an error the generator raised,
        then cuts the connection (the head went out: no other status can be sent)."""
        await send({"type": "http.response.start", "status": status, "headers": headers})
        relay = asyncio.ensure_future(self._relay_body(req_id, status, send))
        end = await client.wait(relay)
        if end is DONE:
            relay.result()  # raises ResponseAborted if the generator failed
            return
        await asyncio.gather(relay, return_exceptions=True)  # its end_stream cancels the generator
        if end is TIMED_OUT:
            logger.warning("streamed response %s timed out after %s s; cutting it", req_id, self.timeout_s)
            raise ResponseAborted(status, f"streamed response {req_id} timed out")

    async def _relay_body(self, req_id: str, status: int, send: Send) -> None:
        assert self.client is not None
        ended = False
        try:
            async for fields in self.client.stream_entries_async(req_id, lambda: ended):  # noqa: B023 - reads it late on purpose
                if streams.ITEMS in fields:
                    for chunk in streams.decode_items(fields[streams.ITEMS]):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    continue
                ended = True
                if streams.ERROR in fields:
                    ok, failure = codec.decode_outcome(fields[streams.ERROR])
                    logger.error("streamed response %s failed midway; cutting it:\n%s", req_id, failure.traceback)
                    raise ResponseAborted(status, f"streamed response {req_id} failed")
            await send({"type": "http.response.body", "body": b""})
        finally:
            self.client.end_stream(req_id, cancel=not ended)


def _with_request_id(scope: Scope, req_id: str) -> tuple[list[tuple[bytes, bytes]], str]:
    """The request's headers, as the client sent them (the ingress sees the request
    intact), and its user-visible id, as Ray's proxy decides it: the client's
    ``X-Request-Id``, else a new one (the call's own id, which travels free)."""
    headers = list(scope.get("headers", ()))
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            return headers, value.decode("latin-1")
    return headers, req_id


def _answering_with(send: Send, request_id: str) -> Send:
    """``send``, adding the ``X-Request-Id`` header to the response, as Ray's proxy does."""
    header = (REQUEST_ID_HEADER, request_id.encode("latin-1"))

    async def tagged(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    return tagged


class _GatewayApp:
    """Requests for applications go straight to :meth:`Gateway.proxy`; the gateway's own
    endpoints (``/-/...``, ``/metrics``) and the lifespan go to its Starlette app."""

    def __init__(self, gateway: Gateway, admin: Starlette) -> None:
        self.gateway = gateway
        self.admin = admin
        self.state = admin.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")  # a lifespan scope has none
        ours = path.startswith("/-/") or path == "/metrics"
        if scope["type"] == "http" and not ours:
            await self.gateway.proxy(scope, receive, send)
        elif scope["type"] == "websocket" and not ours:
            await self.gateway.socket(scope, receive, send)
        else:
            await self.admin(scope, receive, send)


def create_app(url: str, namespace: str, *, result_ttl_ms: int, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               timeout_s: float | None = None, address: tuple[str, int] = ("", 0), dashboard: bool = True) -> Any:
    """The gateway's ASGI app; serve it with uvicorn (see ``gateway.server``). ``address``
    is where it listens, announced in Redis for ``mqserve status``; ``dashboard`` serves
    ``/-/dashboard`` and ``/-/api/status`` (``MQSERVE_DASHBOARD``)."""
    gw = Gateway(url, namespace, result_ttl_ms=result_ttl_ms, max_body_bytes=max_body_bytes, timeout_s=timeout_s,
                 address=address)
    admin = Starlette(routes=[
        StarletteRoute("/-/healthz", gw.healthz, methods=["GET"]),
        StarletteRoute("/-/routes", gw.list_routes, methods=["GET"]),
        StarletteRoute("/metrics", gw.metrics_text, methods=["GET"]),
        StarletteRoute(background.MONITOR_PATH, partial(background.get_request, gw), methods=["GET"]),
        StarletteRoute(background.MONITOR_PATH, partial(background.delete_request, gw), methods=["DELETE"]),
        *(Dashboard(gw.registry).routes() if dashboard else []),
    ], lifespan=gw.lifespan)
    admin.state.gateway = gw
    return _GatewayApp(gw, admin)
