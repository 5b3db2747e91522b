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
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route as StarletteRoute

from actors.config import DEFAULT_MAX_BODY_BYTES
from actors.exceptions import BackPressureError, DeploymentUnavailableError
from actors.multiplex import model_id_from_headers
from actors.runtime import bridge
from actors.runtime.caller import CallClient, get_client
from actors.runtime.controller import MEMBER_TTL_MS, ControllerLoop
from actors.status import collect_status
from broker import codec, streams
from broker.connection import connect
from broker.keys import Keys
from broker.registry import Registry

from .metrics import Metrics
from .routing import Route, RouteTable

logger = logging.getLogger("mqserve.gateway")

#: Largest request body accepted unless ``MQSERVE_MAX_BODY_BYTES`` says otherwise (100 MiB).
#: Seconds between route reloads when no change event arrives.
ROUTE_RELOAD_S = 5.0
#: The status counted (as nginx does) for a request whose client left before its body was in.
CLIENT_CLOSED_REQUEST = 499
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
        self.metrics = Metrics()
        self.client: CallClient | None = None
        self.stopped = threading.Event()

    # Routes ----------------------------------------------------------------------------
    async def reload(self) -> None:
        self.routes = RouteTable(await bridge.run_sync(self.registry.apps))

    def _watch_events(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reload the routes whenever an app changes, and every :data:`ROUTE_RELOAD_S`
        (a thread: pub/sub blocks)."""
        self.registry.follow(lambda _: bridge.submit(loop, self.reload()), self.stopped,
                             every_s=ROUTE_RELOAD_S, what="route changes")

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.client = get_client(self.url, self.keys, result_ttl_ms=self.result_ttl_ms)
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

    # Endpoints ----------------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("success")

    async def list_routes(self, request: Request) -> Response:
        return JSONResponse(self.routes.as_dict())

    async def metrics_text(self, request: Request) -> Response:
        status = await bridge.run_sync(collect_status, self.registry)
        rows = [(app, name, dep.queued_requests, dep.ongoing_requests)
                for app, overview in status.applications.items() for name, dep in overview.deployments.items()]
        return PlainTextResponse(self.metrics.render(rows), media_type="text/plain; version=0.0.4")

    # The request path: raw ASGI, as the hot path skips Starlette's request/response objects.
    async def proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.monotonic()
        path = scope["path"]
        route = self.routes.match(path)
        if route is None:
            await self.reload()  # an app may have just been deployed
            route = self.routes.match(path)
        if route is None:
            await _send_text(send, 404, f"Path '{path}' not found. Routes: {self.routes.as_dict()}")
            return
        status = await self._forward(scope, receive, send, route)
        self.metrics.observe(route.app, route.ingress, status, time.monotonic() - start)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, route: Route) -> int:
        assert self.client is not None
        body = await self._body(scope, receive)
        if body is _DISCONNECTED:  # the client left mid-body: never run a truncated request
            return CLIENT_CLOSED_REQUEST
        if body is None:
            return await _send_text(send, 413, f"Request body larger than {self.max_body_bytes} bytes "
                                               "(MQSERVE_MAX_BODY_BYTES).")
        snapshot = {
            "method": scope["method"], "path": scope["path"], "root_path": route.root_path,
            "query_string": scope.get("query_string", b""), "headers": list(scope.get("headers", [])),
            "http_version": scope.get("http_version", "1.1"), "scheme": scope.get("scheme", "http"),
            "server": scope.get("server"), "client": scope.get("client"), "body": body,
        }
        req_id = codec.new_request_id()
        # Only plain values: the replica unpickles this, the gateway never unpickles client data.
        payload = pickle.dumps(((snapshot,), {}), protocol=pickle.HIGHEST_PROTOCOL)
        model = model_id_from_headers(snapshot["headers"])  # routes it, as a handle's multiplexed_model_id
        message = codec.encode_request(req_id=req_id, method="__call__", payload=payload,
                                       reply_to=self.client.reply_inbox(), http=True, model=model)
        future = self.client.submit(route.app, route.ingress, req_id, message, model=model)
        try:
            outcome = await asyncio.wait_for(bridge.wait(future), self.timeout_s)
        except asyncio.TimeoutError:
            self.client.cancel(route.app, route.ingress, req_id, message)
            return await _send_text(send, 408, f"Request timed out after {self.timeout_s} s.")
        except (BackPressureError, DeploymentUnavailableError, ConnectionError) as e:
            return await _send_text(send, 503, str(e))
        ok, value = codec.decode_outcome(outcome)
        if not ok:
            logger.error("request %s to application '%s' failed:\n%s", req_id, route.app, value.traceback)
            return await _send_text(send, 500, "Internal Server Error")
        if value[0] == "http":
            _, status, headers, content = value
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
            return int(status)
        _, status, headers = value
        await self._relay_stream(req_id, status, headers, receive, send)
        return int(status)

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
                            receive: Receive, send: Send) -> None:
        """Send a streamed response as it comes; a client that leaves cancels the generator."""
        assert self.client is not None
        await send({"type": "http.response.start", "status": status, "headers": headers})
        relay = asyncio.ensure_future(self._relay_body(req_id, send))
        left = asyncio.ensure_future(_disconnected(receive))
        await asyncio.wait({relay, left}, return_when=asyncio.FIRST_COMPLETED)
        for task in (relay, left):
            task.cancel()
        await asyncio.gather(relay, left, return_exceptions=True)

    async def _relay_body(self, req_id: str, send: Send) -> None:
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
                    logger.error("streamed response %s failed:\n%s", req_id, failure.traceback)
            await send({"type": "http.response.body", "body": b""})
        finally:
            self.client.end_stream(req_id, cancel=not ended)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_text(send: Send, status: int, text: str) -> int:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
    return status


class _GatewayApp:
    """Requests for applications go straight to :meth:`Gateway.proxy`; the gateway's own
    endpoints (``/-/...``, ``/metrics``) and the lifespan go to its Starlette app."""

    def __init__(self, gateway: Gateway, admin: Starlette) -> None:
        self.gateway = gateway
        self.admin = admin
        self.state = admin.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not (scope["path"].startswith("/-/") or scope["path"] == "/metrics"):
            await self.gateway.proxy(scope, receive, send)
        else:
            await self.admin(scope, receive, send)


def create_app(url: str, namespace: str, *, result_ttl_ms: int, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               timeout_s: float | None = None, address: tuple[str, int] = ("", 0)) -> Any:
    """The gateway's ASGI app; serve it with uvicorn (see ``gateway.server``). ``address``
    is where it listens, announced in Redis for ``mqserve status``."""
    gw = Gateway(url, namespace, result_ttl_ms=result_ttl_ms, max_body_bytes=max_body_bytes, timeout_s=timeout_s,
                 address=address)
    admin = Starlette(routes=[
        StarletteRoute("/-/healthz", gw.healthz, methods=["GET"]),
        StarletteRoute("/-/routes", gw.list_routes, methods=["GET"]),
        StarletteRoute("/metrics", gw.metrics_text, methods=["GET"]),
    ], lifespan=gw.lifespan)
    admin.state.gateway = gw
    return _GatewayApp(gw, admin)
