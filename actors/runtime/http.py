"""Replica side of HTTP: rebuild the request, run the ingress, send back the response.

The gateway sends a snapshot of the request (plain values: method, path, headers,
body...). Here it becomes an ASGI scope; the deployment's ASGI app (``@serve.ingress``)
or its ``__call__`` (given a ``starlette.requests.Request``) runs on the replica's
event loop, and the ASGI messages it sends become the reply:

- a response sent in one piece is the request's outcome: ``("http", status, headers, body)``;
- a response sent in several pieces (streaming) is announced to the gateway at its
  first piece, ``("http-stream", status, headers)``, and its body goes through the
  request's stream; for a background request (``Prefer: respond-async``) its pieces are
  collected into one response instead, stored for whoever reads it later.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from broker import codec
from broker.queue import STREAMED

from . import bridge
from .lifespan import Lifespan
from .streaming import StreamWriter

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def build_scope(snapshot: dict[str, Any], kind: str = "http") -> Scope:
    """The ASGI scope of a request (``kind`` "http") or a WebSocket connection
    ("websocket"), from the gateway's snapshot of it."""
    path = snapshot["path"]
    scope: Scope = {
        "type": kind,
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": snapshot.get("http_version", "1.1"),
        "scheme": snapshot.get("scheme", "http" if kind == "http" else "ws"),
        "path": path,
        "raw_path": path.encode(),
        "root_path": snapshot.get("root_path", ""),
        "query_string": snapshot.get("query_string", b""),
        "headers": [(k, v) for k, v in snapshot.get("headers", [])],
        "server": tuple(snapshot["server"]) if snapshot.get("server") else None,
        "client": tuple(snapshot["client"]) if snapshot.get("client") else None,
    }
    if kind == "http":
        scope["method"] = snapshot["method"]
    else:
        scope["subprotocols"] = list(snapshot.get("subprotocols", []))
    return scope


def to_response(result: Any) -> Response:
    """Ray Serve's rules: a Response as is, str as text/plain, a generator streams,
    anything else as JSON."""
    if isinstance(result, Response):
        return result
    if isinstance(result, str):
        return PlainTextResponse(result)
    if isinstance(result, (bytes, bytearray)):
        return Response(bytes(result), media_type="application/octet-stream")
    if inspect.isasyncgen(result):
        return StreamingResponse(_achunks(result))
    if inspect.isgenerator(result):  # Starlette iterates it on a thread: it may block
        return StreamingResponse(stream_chunk(item) for item in result)
    return Response(to_json(result), media_type="application/json")


def stream_chunk(item: Any) -> bytes:
    """A streamed item on the wire: str and bytes as they are, other values as JSON lines."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    return to_json(item) + b"\n"


def to_json(value: Any) -> bytes:
    """JSON as Starlette's ``JSONResponse`` writes it, also for the values Ray Serve sends
    as JSON that ``json`` alone refuses (see ``_jsonable``)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                      default=_jsonable).encode()


def _jsonable(value: Any) -> Any:
    """``json``'s fallback, wherever the value is nested. Any ``Mapping`` (Starlette's
    ``QueryParams``, ``Headers``) is an object keeping the last value of a repeated key, as
    ``dict()`` and Ray Serve do. numpy scalars and arrays become numbers and lists through
    their own ``tolist()``, so numpy stays optional and is never imported here."""
    if isinstance(value, Mapping):
        return dict(value)
    if type(value).__module__ == "numpy":
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


async def _achunks(result: Any) -> Any:
    async for item in result:
        yield stream_chunk(item)


def call_as_asgi(method: Callable[..., Any]) -> ASGIApp:
    """An ASGI app that calls ``method(request)`` and sends what it returns.

    A method without parameters is called without the request: Ray Serve reads the
    signature the same way, so ``async def __call__(self)`` serves HTTP there too.
    """
    takes_request = bool(inspect.signature(method).parameters)

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":  # only an ASGI app (@serve.ingress) serves WebSockets
            await send({"type": "websocket.close", "code": 1000, "reason": ""})  # refused: HTTP 403
            return
        args = (Request(scope, receive),) if takes_request else ()
        if inspect.iscoroutinefunction(method):
            result = await method(*args)
        else:
            result = await bridge.run_sync(method, *args)
            if inspect.isawaitable(result):
                result = await result
        await to_response(result)(scope, receive, send)

    return app


def current_instance() -> Any:
    """The replica's instance of its ``@serve.ingress`` class: the ``self`` of its method
    routes (``actors.ingress`` makes ``self`` a FastAPI dependency on this)."""
    if _serving is None:
        raise RuntimeError("no @serve.ingress deployment runs in this process")
    return _serving.instance


class Ingress:
    """The ``@serve.ingress`` app of this replica, serving its instance; its lifespan
    runs from :meth:`start` to :meth:`stop`, and the state it yields is every request's."""

    def __init__(self, app: ASGIApp, instance: Any) -> None:
        self.app = app
        self.instance = instance
        self.lifespan: Lifespan | None = None

    async def start(self) -> None:
        """Become the process's ingress and run the app's lifespan startup (raises
        ``LifespanStartupError`` if it fails)."""
        global _serving
        _serving = self
        self.lifespan = Lifespan(self.app)
        await self.lifespan.startup()

    async def stop(self) -> None:
        if self.lifespan is not None:
            await self.lifespan.shutdown()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if self.lifespan is not None and self.lifespan.state:
            scope["state"] = dict(self.lifespan.state)  # a copy per request, as uvicorn gives
        await self.app(scope, receive, send)


#: The ingress this replica serves (one deployment per process).
_serving: Ingress | None = None


def ingress_of(target: Any) -> Ingress | None:
    """The ``@serve.ingress`` app of a replica's user object (a class instance), if any."""
    app = getattr(type(target), "_mq_ingress_app", None)
    return None if app is None else Ingress(app, target)


def bind_ingress(app: Any, cls: type, instance: Any) -> ASGIApp:
    """The ASGI app that serves ``instance``'s HTTP requests: the ingress its replica
    started (see ``actors.runtime.replica``), else ``app`` serving ``instance``."""
    global _serving
    if _serving is None or _serving.instance is not instance:
        _serving = Ingress(app, instance)  # not started by a replica: no lifespan
    return _serving


class _Reply:
    """Collects the ASGI messages of one response and turns them into the reply."""

    def __init__(self, open_stream: Callable[[], StreamWriter], collect: bool = False) -> None:
        self.open_stream = open_stream
        self.collect = collect  # a background request's: its pieces make one stored response
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []
        self.writer: StreamWriter | None = None
        self.done = False

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif kind == "http.response.body":
            body, more = message.get("body", b""), message.get("more_body", False)
            if self.collect or (self.writer is None and not more):
                self.parts.append(body)
                self.done = not more
                return
            if self.writer is None:
                self.writer = self.open_stream()
                self.writer.announce(codec.encode_value(("http-stream", self.status, self.headers)))
                for part in self.parts:
                    self.writer.put(part)
            if body:
                self.writer.put(body)
            if not more:
                self.writer.finish()
                self.done = True

    async def outcome(self) -> bytes:
        if self.writer is None:
            return codec.encode_value(("http", self.status, self.headers, b"".join(self.parts)))
        if not self.done:  # the app returned without finishing its body
            self.writer.finish()
        await bridge.wait(self.writer.done)
        return STREAMED


async def serve(app: ASGIApp, snapshot: dict[str, Any], open_stream: Callable[[], StreamWriter], *,
                collect: bool = False) -> bytes:
    """Run one HTTP request through ``app``; returns the request's outcome bytes.
    ``collect``: a background request (``Prefer: respond-async``), whose response is
    stored whole for later reads: a streamed one is collected, not streamed to nobody."""
    scope = build_scope(snapshot)
    body = snapshot.get("body", b"")
    left = asyncio.Event()
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await left.wait()  # a disconnect is only ever reported by cancellation
        return {"type": "http.disconnect"}

    reply = _Reply(open_stream, collect)
    try:
        await app(scope, receive, reply.send)
    except Exception as e:
        if reply.writer is not None:  # the head went out already: end the stream with the error
            reply.writer.finish(codec.encode_error(e))
            await bridge.wait(reply.writer.done)
            return STREAMED
        raise
    return await reply.outcome()


