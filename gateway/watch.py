"""Waiting on a forwarded request while watching its client: did the client leave, did
the request time out?

Ray Serve's proxy cancels a request whose client disconnects, and one that runs past
``request_timeout_s`` (408). uvicorn reports a disconnect only to a pending
``receive()``, so a task has to wait in it. Most requests are answered within
milliseconds: the task starts only once a request has waited :data:`LISTEN_AFTER_S`
(a disconnect before then is still seen, at that moment), so that the common request
costs a timer, not a task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]

#: Seconds a request waits before the gateway starts listening for its client leaving.
LISTEN_AFTER_S = 0.05


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
    Made on the event loop serving the request; :meth:`close` it when the request is over."""

    def __init__(self, receive: Receive, timeout_s: float | None) -> None:
        self._receive = receive
        self._loop = asyncio.get_running_loop()
        self._deadline = None if timeout_s is None else self._loop.time() + timeout_s
        self._listen = self._loop.call_later(LISTEN_AFTER_S, self._start_listening)
        self._listener: asyncio.Task[None] | None = None
        self._ended: End | None = None
        self._work: asyncio.Future[Any] | None = None

    async def wait(self, work: asyncio.Future[Any]) -> End:
        """Wait for ``work`` (its outcome is the caller's to read); if the client leaves
        or the deadline passes first, cancel it and say which."""
        if self._ended is not None:
            work.cancel()
            return self._ended
        timer = None if self._deadline is None else self._loop.call_at(self._deadline, self._end, TIMED_OUT)
        self._work = work
        try:
            await work
        except asyncio.CancelledError:
            if self._ended is None or not work.cancelled():
                raise  # the request's own task was cancelled (the server stops)
            return self._ended
        except Exception:
            pass  # work failed: that is its outcome
        finally:
            self._work = None
            if timer is not None:
                timer.cancel()
        return DONE

    def close(self) -> None:
        self._listen.cancel()
        if self._listener is not None:
            self._listener.remove_done_callback(self._left)
            self._listener.cancel()

    def _start_listening(self) -> None:
        self._listener = self._loop.create_task(_disconnected(self._receive))
        self._listener.add_done_callback(self._left)

    def _left(self, listener: asyncio.Task[None]) -> None:
        if not listener.cancelled() and listener.exception() is None:
            self._end(LEFT)

    def _end(self, how: End) -> None:
        if self._ended is None:
            self._ended = how
        if self._work is not None:
            self._work.cancel()


async def _disconnected(receive: Receive) -> None:
    """Returns once the client disconnected (the request's body was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
