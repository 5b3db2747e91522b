"""The ASGI lifespan of an ``@serve.ingress`` app, run on its replica.

Ray Serve runs the app's startup when a replica starts, after the constructor (a
startup that fails fails the deploy, as a constructor error does), and its shutdown
when the replica stops. The app's lifespan runs as one task on the replica's loop from
startup to shutdown, as under any ASGI server; what it yields as state is given to
every request's scope.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..exceptions import ServeException

logger = logging.getLogger("mqserve.replica")

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class LifespanStartupError(ServeException, RuntimeError):
    """The ingress app's lifespan startup failed: the deploy fails with this. A
    ``RuntimeError``, as Ray Serve raises; the message holds the app's own error."""


class Lifespan:
    """Drives one app's lifespan: :meth:`startup`, later :meth:`shutdown`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        #: The state the lifespan yielded (``request.state`` of every request).
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Run the app's startup; raises :class:`LifespanStartupError` if it fails. An
        app that does not speak the lifespan protocol (it raises at once) has none."""
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        self._task = asyncio.ensure_future(self.app(scope, self._inbox.get, self._outbox.put))
        await self._inbox.put({"type": "lifespan.startup"})
        reply = await self._reply()
        if reply is None:
            return  # no lifespan support: nothing to start or stop
        if reply["type"] == "lifespan.startup.failed":
            error = await self._error()
            raise LifespanStartupError(
                f"ASGI lifespan startup failed: {_describe(error, reply.get('message', ''))}") from error

    async def shutdown(self) -> None:
        """Run the app's shutdown; its errors are logged (the replica stops anyway)."""
        if self._task is None or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        reply = await self._reply()
        if reply is not None and reply["type"] == "lifespan.shutdown.failed":
            logger.error("ASGI lifespan shutdown failed:\n%s", reply.get("message", ""))
        if reply is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _reply(self) -> dict[str, Any] | None:
        """The app's next lifespan message, or None if its lifespan ended without one."""
        assert self._task is not None
        reply = asyncio.ensure_future(self._outbox.get())
        await asyncio.wait((reply, self._task), return_when=asyncio.FIRST_COMPLETED)
        if reply.done():
            return reply.result()
        reply.cancel()
        if not self._task.cancelled() and self._task.exception() is not None:
            logger.info("the ingress app does not run an ASGI lifespan (%r)", self._task.exception())
        return None

    async def _error(self) -> BaseException | None:
        """The exception the app raised after reporting a failure (Starlette re-raises it)."""
        assert self._task is not None
        await asyncio.gather(self._task, return_exceptions=True)
        return None if self._task.cancelled() else self._task.exception()


def _describe(error: BaseException | None, message: str) -> str:
    if error is None:
        return message or "the app reported a failure"
    return f"{type(error).__name__}: {error}\n{message}".rstrip()
