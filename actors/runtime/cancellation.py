"""Cancellations a replica hears: requests it must not start, or must stop.

A caller cancels a request that a replica already took by setting the request's cancel
flag and publishing its id (``cancel.lua``). The flag is durable; the publication reaches
every replica at once, but only while it is subscribed, and it may arrive before the
replica has started the request (taken, not yet running). So a replica remembers the ids
it hears for :data:`MEMORY_S`, checks them when it starts a request, and every time it
(re)subscribes it reads the flags of the requests in its processing list, which covers
whatever it may have missed while it was not subscribed.

Cancelling a request also cancels, recursively, the calls its user code made while it
ran (Ray's semantics): a handle call made in the context of a running request registers
with :data:`children`, which cancels them when the request is.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

#: Seconds a replica remembers a cancellation it heard for a request it does not run
#: (yet): far longer than a taken request waits for a free thread.
MEMORY_S = 60.0


#: The request whose user code runs in this context: set on the worker thread that runs
#: it, and so inherited by the tasks it starts on the replica's loop.
current_request: contextvars.ContextVar[str | None] = contextvars.ContextVar("mqserve_request", default=None)


class Children:
    """The calls each running request made, to cancel with it. Thread-safe.

    Only the calls made before the request was cancelled go with it, as in Ray: a call
    made afterwards (cleanup in an ``except CancelledError:``, or sync code running on)
    is the code's own decision."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, list[Callable[[], None]]] = {}

    def adopt(self, cancel: Callable[[], None]) -> None:
        """A call was just made: cancel it with the request running here, if any."""
        parent = current_request.get()
        if parent is None:
            return
        with self._lock:
            self._calls.setdefault(parent, []).append(cancel)

    def cancel(self, parent: str) -> None:
        with self._lock:
            calls = self._calls.pop(parent, ())
        for cancel in calls:
            cancel()

    def forget(self, parent: str) -> None:
        """The request ended: the calls it made live on (as in Ray)."""
        with self._lock:
            self._calls.pop(parent, None)


children = Children()


class Cancellations:
    """Thread-safe: heard on the events thread, checked on worker threads and the loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, Future[Any]] = {}
        self._heard: dict[str, float] = {}  # request id -> when (oldest first)

    def heard(self, req_id: str) -> None:
        """A caller cancelled ``req_id``: stop it if it runs here, or never start it."""
        with self._lock:
            task = self._running.get(req_id)
            if task is None:
                self._heard[req_id] = time.monotonic()
                self._forget_old()
        children.cancel(req_id)  # first: the task's end forgets them
        if task is not None:
            task.cancel()  # CancelledError inside the user's coroutine

    def cancelled(self, req_id: str) -> bool:
        """Whether ``req_id`` was cancelled before it started."""
        with self._lock:
            return req_id in self._heard

    def start(self, req_id: str, task: Future[Any]) -> None:
        """``task`` runs ``req_id`` now; cancelled at once if that was heard meanwhile."""
        with self._lock:
            cancelled = self._heard.pop(req_id, None) is not None
            if not cancelled:
                self._running[req_id] = task
        if cancelled:
            task.cancel()
        else:  # outside the lock: a task done already calls back at once, here
            task.add_done_callback(lambda _: self._finish(req_id))

    def _finish(self, req_id: str) -> None:
        with self._lock:
            self._running.pop(req_id, None)

    def _forget_old(self) -> None:
        cutoff = time.monotonic() - MEMORY_S
        for req_id, at in list(self._heard.items()):
            if at > cutoff:
                break
            del self._heard[req_id]
