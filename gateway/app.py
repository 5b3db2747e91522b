"""The HTTP gateway: a Starlette app that forwards requests to ingress deployments.

It holds no state but Redis: routes come from the registry (reloaded on every app
change event, and on a miss), requests go through the same queues as handle calls.
It never unpickles what a client sent: the request is forwarded as plain values (method,
path, headers, body bytes) and rebuilt on the replica.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Optional

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route as StarletteRoute

from actors.exceptions import BackPressureError, DeploymentUnavailableError
from actors.handle import wait_on_loop
from broker import codec, streams
from broker.calls import CallClient, get_client
from broker.connection import connect
from broker.keys import Keys
from broker.registry import Registry

from .metrics import Metrics
from .routing import Route, RouteTable

logger = logging.getLogger("mqserve.gateway")

#: Largest request body accepted unless ``MQSERVE_MAX_BODY_BYTES`` says otherwise (100 MiB).
DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024
#: Seconds between route reloads when no change event arrives.
ROUTE_RELOAD_S = 5.0
_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


class Gateway:
    """Routes, client and counters of one gateway process."""

    def __init__(self, url: str, namespace: str, *, result_ttl_ms: int, max_body_bytes: int,
                 timeout_s: Optional[float]) -> None:
        self.keys = Keys(namespace)
        self.url = url
        self.result_ttl_ms = result_ttl_ms
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s
        self.registry = Registry(connect(url), self.keys)
        self.routes = RouteTable()
        self.metrics = Metrics()
        self.client: Optional[CallClient] = None
        self.stopped = threading.Event()

    # Routes ----------------------------------------------------------------------------
    async def reload(self) -> None:
        self.routes = RouteTable(await asyncio.to_thread(self.registry.apps))

    def _watch_events(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reload the routes whenever an app changes (a thread: pub/sub blocks)."""
        while not self.stopped.is_set():
            try:
                pubsub = self.registry.subscribe()
                while not self.stopped.is_set():
                    message = pubsub.get_message(timeout=ROUTE_RELOAD_S)
                    if message is None or b'"app"' in message.get("data", b""):
                        asyncio.run_coroutine_threadsafe(self.reload(), loop)
            except Exception as e:  # Redis went away: retry
                logger.warning("gateway lost its event subscription (%s); retrying", e)
                self.stopped.wait(1.0)

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.client = get_client(self.url, self.keys, result_ttl_ms=self.result_ttl_ms)
        await self.reload()
        threading.Thread(target=self._watch_events, args=(asyncio.get_running_loop(),), daemon=True).start()
        yield
        self.stopped.set()

    # Endpoints ----------------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("success")

    async def list_routes(self, request: Request) -> Response:
        return JSONResponse(self.routes.as_dict())

    async def metrics_text(self, request: Request) -> Response:
        def queues() -> list[tuple[str, str, int, int]]:
            rows = []
            for name, rec in self.registry.apps().items():
                deps = rec["deployments"]
                replicas = self.registry.replica_sets(name, deps)
                load = self.registry.load(name, deps, {d: list(replicas[d]) for d in deps})
                rows += [(name, d, load[d]["queued"], load[d]["ongoing"]) for d in deps]
            return rows

        rows = await asyncio.to_thread(queues)
        return PlainTextResponse(self.metrics.render(rows), media_type="text/plain; version=0.0.4")

    async def proxy(self, request: Request) -> Response:
        start = time.monotonic()
        route = self.routes.match(request.url.path)
        if route is None:
            await self.reload()  # an app may have just been deployed
            route = self.routes.match(request.url.path)
        if route is None:
            return PlainTextResponse(f"Path '{request.url.path}' not found. Routes: {self.routes.as_dict()}",
                                     status_code=404)
        response = await self._forward(request, route)
        self.metrics.observe(route.app, route.ingress, response.status_code, time.monotonic() - start)
        return response

    async def _forward(self, request: Request, route: Route) -> Response:
        assert self.client is not None
        body = await self._body(request)
        if body is None:
            return PlainTextResponse(f"Request body larger than {self.max_body_bytes} bytes "
                                     "(MQSERVE_MAX_BODY_BYTES).", status_code=413)
        scope = request.scope
        snapshot = {
            "method": scope["method"], "path": scope["path"], "root_path": route.root_path,
            "query_string": scope.get("query_string", b""), "headers": list(scope.get("headers", [])),
            "http_version": scope.get("http_version", "1.1"), "scheme": scope.get("scheme", "http"),
            "server": scope.get("server"), "client": scope.get("client"), "body": body,
        }
        req_id = codec.new_request_id()
        # Only plain values: the replica unpickles this, the gateway never unpickles client data.
        payload = pickle.dumps(((snapshot,), {}), protocol=pickle.HIGHEST_PROTOCOL)
        message = codec.encode_request(req_id=req_id, method="__call__", payload=payload,
                                       reply_to=self.client.reply_inbox(), http=True)
        future = self.client.submit(route.app, route.ingress, req_id, message)
        try:
            outcome = await asyncio.wait_for(wait_on_loop(future), self.timeout_s)
        except asyncio.TimeoutError:
            self.client.forget(req_id)
            self.client.cancel(route.app, route.ingress, req_id, message)
            return PlainTextResponse(f"Request timed out after {self.timeout_s} s.", status_code=408)
        except (BackPressureError, DeploymentUnavailableError, ConnectionError) as e:
            return PlainTextResponse(str(e), status_code=503)
        ok, value = codec.decode_outcome(outcome)
        if not ok:
            logger.error("request %s to application '%s' failed:\n%s", req_id, route.app, value.traceback)
            return PlainTextResponse("Internal Server Error", status_code=500)
        if value[0] == "http":
            _, status, headers, content = value
            response = Response(content, status_code=status)
            response.raw_headers = list(headers)
            return response
        _, status, headers = value
        response = StreamingResponse(self._stream(req_id), status_code=status)
        response.raw_headers = list(headers)
        return response

    async def _body(self, request: Request) -> Optional[bytes]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body_bytes:
                    return None
                chunks.append(chunk)
        except ClientDisconnect:
            return b""
        return b"".join(chunks)

    async def _stream(self, req_id: str) -> AsyncIterator[bytes]:
        assert self.client is not None
        ended = False
        try:
            async for fields in self.client.stream_entries_async(req_id, lambda: ended):
                if streams.ITEMS in fields:
                    for chunk in streams.decode_items(fields[streams.ITEMS]):
                        yield chunk
                    continue
                ended = True
                if streams.ERROR in fields:
                    ok, failure = codec.decode_outcome(fields[streams.ERROR])
                    logger.error("streamed response %s failed:\n%s", req_id, failure.traceback)
                return
        finally:
            # A client that left early cancels the generator on the replica.
            self.client.end_stream(req_id, cancel=not ended)


def create_app(url: str, namespace: str, *, result_ttl_ms: int, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               timeout_s: Optional[float] = None) -> Starlette:
    """The gateway's ASGI app; serve it with uvicorn (see ``gateway.server``)."""
    gw = Gateway(url, namespace, result_ttl_ms=result_ttl_ms, max_body_bytes=max_body_bytes, timeout_s=timeout_s)
    app = Starlette(routes=[
        StarletteRoute("/-/healthz", gw.healthz, methods=["GET"]),
        StarletteRoute("/-/routes", gw.list_routes, methods=["GET"]),
        StarletteRoute("/metrics", gw.metrics_text, methods=["GET"]),
        StarletteRoute("/{path:path}", gw.proxy, methods=_METHODS),
    ], lifespan=gw.lifespan)
    app.state.gateway = gw
    return app
