"""Waiting on a forwarded request while watching its client: did the client leave, did
the request time out?

Ray Serve's proxy cancels a request whose client disconnects, and one that runs past
``request_timeout_s`` (408). uvicorn reports a disconnect only to a pending
``receive()``, so one task per request waits in it while the gateway waits for the reply.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]


class End:
    """How a wait ended: :data:`DONE`, :data:`LEFT` or :data:`TIMED_OUT`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: What was waited for is done.
DONE = End("DONE")
#: The client disconnected first.
LEFT = End("LEFT")
#: The request's deadline passed first.
TIMED_OUT = End("TIMED_OUT")


class ClientWatch:
    """The client of one request and its deadline (``timeout_s`` from now; None: none).

    Call :meth:`close` when the request is over: it stops listening to the client.
    """

    def __init__(self, receive: Receive, timeout_s: float | None) -> None:
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._left = asyncio.ensure_future(_disconnected(receive))

    async def wait(self, work: asyncio.Future[Any]) -> End:
        """Wait for ``work``; if the client leaves or the deadline passes first, cancel it
        and say which."""
        remaining = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        done, _ = await asyncio.wait((work, self._left), timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return DONE
        work.cancel()
        return LEFT if self._left in done else TIMED_OUT

    def close(self) -> None:
        self._left.cancel()


async def _disconnected(receive: Receive) -> None:
    """Returns once the client disconnected (the request's body was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
