"""Access logs: one line per request a replica runs, in Ray Serve's words.

A handle call logs ``CALL {method} {OK|ERROR|CANCELLED} {ms}ms`` once its outcome is
known; an HTTP request logs ``{METHOD} {route} {status} {ms}ms`` once its response is
sent, ``route`` being the matched route of the ingress app (``/{name}`` for FastAPI's
``@app.get("/{name}")``) under the application's route prefix, or the prefix alone; a
WebSocket connection logs ``WS {route} {close code} {ms}ms`` once it closes.
They go to the ``ray.serve`` logger with ``extra={"serve_access_log": True}``, so
``LoggingConfig(enable_access_log=False)`` drops them; then a replica builds no
:class:`AccessLog` at all, and requests pay nothing for it.

A line is written by the access log's own thread: formatting it and writing it to
stderr and the file takes longer than a short request, and the request's outcome should
not wait for it (a request hands over its figures, the thread logs them).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import MutableMapping
from concurrent.futures import Future
from typing import Any

from broker import codec

from ..context import _RequestContext, _serve_request_context
from .http import ASGIApp, Scope
from .logs import ACCESS_LOG_ATTR, SERVE_LOGGER_NAME

#: The status an HTTP request gets in the access log when its client left first (as nginx).
CLIENT_CLOSED = 499


class AccessLog:
    """Writes the access log lines of one replica, from a thread of its own."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(SERVE_LOGGER_NAME)
        self._lines: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, name="mqserve-access-log", daemon=True)
        self._writer.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Write the lines still queued, then stop the thread."""
        self._lines.put(None)
        self._writer.join(timeout_s)

    def _write(self) -> None:
        logger = self.logger
        while (line := self._lines.get()) is not None:
            if not logger.isEnabledFor(logging.INFO):
                continue
            fmt, args, extra = line
            # The record made directly, as Logger.info makes it but for the caller's file
            # and line, which it finds by walking the stack: a third of a line's cost, and
            # it would only name this thread's loop.
            logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, fmt, args, None, extra=extra))

    def watch_call(self, method: str, request: _RequestContext, started: float, outcome: Future[bytes]) -> None:
        """Log handle call ``method`` (running as ``request`` since ``started``, from
        ``time.perf_counter()``) when ``outcome`` resolves."""

        def done(future: Future[bytes]) -> None:
            raw = future.result()
            status = _call_status(raw) if codec.is_error(raw) else "OK"
            self.line("CALL", method, status, started, request)

        outcome.add_done_callback(done)

    def line(self, method: str, route: str, status: Any, started: float, request: _RequestContext | None) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        extra: dict[str, Any] = {ACCESS_LOG_ATTR: True}
        if request is not None:  # the callback may run outside the request's context
            extra["request_id"] = request.request_id
            if request.route:
                extra["route"] = request.route
        self._lines.put(("%s %s %s %.1fms", (method, route, status, elapsed_ms), extra))

    def asgi(self, app: ASGIApp) -> ASGIApp:
        """``app``, logging each request it serves (in the request's context)."""

        async def logged(scope: Scope, receive: Any, send: Any) -> None:
            started = time.perf_counter()
            status: list[Any] = [500]

            async def sent(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                elif message["type"] == "websocket.close":
                    status[0] = message.get("code") or 1000
                await send(message)

            try:
                await app(scope, receive, sent)
                if scope["type"] == "websocket" and status[0] == 500:  # returned without closing
                    status[0] = 1000
            except asyncio.CancelledError:
                status[0] = CLIENT_CLOSED
                raise
            finally:
                request = _serve_request_context.get()  # the task's, set by the replica
                self.line(scope.get("method", "WS"), route_of(scope), status[0], started, request)

        return logged


def route_of(scope: Scope) -> str:
    """The route an HTTP request matched: the app's route template under the route prefix."""
    prefix = scope.get("root_path", "") or ""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str):
        return (prefix.rstrip("/") + template) or "/"
    return prefix or "/"


def _call_status(outcome: bytes) -> str:
    """ERROR, or CANCELLED for a cancelled call (errors only: this unpickles)."""
    try:
        ok, failure = codec.decode_outcome(outcome)
    except Exception:
        return "ERROR"
    return "CANCELLED" if not ok and failure.type_name.endswith("RequestCancelledError") else "ERROR"
