"""Every crossing between threads and event loops, in one place.

mqserve serves sync and async code alike: a handle is called from plain threads and
from event loops, a replica runs sync methods on threads and async ones on its loop, the
gateway hands blocking work to threads. Each such crossing goes through one of these:

- :func:`running_loop`: is this thread running an event loop (and which)?
- :class:`StepBatch`: things posted during one step of a loop are handled together at
  its next step (one Redis pipeline, one wake-up), whether posted on the loop or from
  other threads;
- :class:`Overrun`: work a loop put off to the end of its step is done by a thread
  instead if that step lasts too long (user code blocking the loop);
- :func:`submit`: run a coroutine on a loop, from another thread;
- :func:`wait` (and :func:`follow`): await a ``concurrent.futures.Future`` on the loop
  that waits for it, with one wake-up per batch of results rather than one per future;
- :func:`run_sync`: run blocking (user) code from a loop on the one thread pool, the
  loop's default executor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: Seconds without work armed after which the :class:`Overrun` thread waits with no
#: timeout (and must be woken by the next ``arm``) rather than checking every budget.
OVERRUN_REST_AFTER_S = 1.0


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop this thread is running, or None in a plain thread."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class StepBatch(Generic[T]):
    """Collects items for one event loop and hands them to ``flush`` together, once per
    step of the loop: everything posted while the loop runs one step is handled at the
    start of the next. ``post`` is for the loop's own thread; ``post_threadsafe`` for
    any other (one wake-up of the loop per batch, not per item)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, flush: Callable[[list[T]], None]) -> None:
        self.loop = loop
        self._flush = flush
        self._items: list[T] = []
        self._lock = threading.Lock()

    def post(self, item: T) -> None:
        self._items.append(item)
        if len(self._items) == 1:
            self.loop.call_soon(self._run)

    def post_threadsafe(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
            first = len(self._items) == 1
        if first:
            try:
                self.loop.call_soon_threadsafe(self._run)
            except RuntimeError:  # the loop was closed meanwhile: nobody waits any more
                pass

    def _run(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        if items:
            self._flush(items)


class Overrun:
    """Does on a thread the work a loop put off to the end of a step that lasts too long.

    Work put off to the end of a loop's step waits for everything else the step runs; if
    user code blocks the loop (``time.sleep``, a long computation), it waits that long.
    ``arm(key, late)``, from the loop, asks for ``late()`` to be called if ``disarm(key)``
    has not come within ``budget_s``: one daemon thread per process calls it, so it must
    be safe there, and it runs while the loop is still blocked (the GIL is released by
    blocking calls, and handed over every switch interval by long computations). While
    work is armed now and then, the thread sleeps in timed waits (about one wake-up per
    budget, however many steps arm); after ``OVERRUN_REST_AFTER_S`` with none, it rests
    until the next ``arm`` wakes it.
    """

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self._cond = threading.Condition(threading.Lock())
        self._armed: dict[object, tuple[float, Callable[[], None]]] = {}
        self._resting = True
        self._pid = 0  # the process the thread runs in (none after a fork)

    def arm(self, key: object, late: Callable[[], None]) -> None:
        with self._cond:
            self._armed[key] = (time.monotonic() + self.budget_s, late)
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="mqserve-overrun", daemon=True).start()
            elif self._resting:
                self._cond.notify()

    def disarm(self, key: object) -> None:
        with self._cond:
            self._armed.pop(key, None)

    def _run(self) -> None:
        active = time.monotonic()
        while True:
            with self._cond:
                now = time.monotonic()
                late = [self._armed.pop(k)[1] for k, (at, _) in list(self._armed.items()) if at <= now]
                if not late:
                    if self._armed:
                        active = now
                        timeout: float | None = min(at for at, _ in self._armed.values()) - now
                    else:
                        timeout = self.budget_s if now - active < OVERRUN_REST_AFTER_S else None
                    self._resting = timeout is None
                    self._cond.wait(timeout)
                    self._resting = False
                    continue
            for fn in late:
                try:
                    fn()
                except Exception:
                    logger.exception("mqserve: work taken over from a blocked event loop failed")


def submit(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Run ``coro`` on ``loop`` (running in another thread); its future, for any thread."""
    return asyncio.run_coroutine_threadsafe(coro, loop)


async def wait(source: concurrent.futures.Future[T]) -> T:
    """Await a ``concurrent.futures.Future`` (as ``asyncio.wrap_future`` does), with one
    wake-up of this loop per batch of results that other threads resolve."""
    if source.done():
        if source.cancelled():
            raise asyncio.CancelledError()
        return source.result()
    return await follow(source)


def follow(source: concurrent.futures.Future[T]) -> asyncio.Future[T]:
    """An asyncio future of the running loop that takes ``source``'s outcome, as
    :func:`wait` awaits it: for code that waits for it among other things
    (``asyncio.wait``). Cancelling it leaves ``source`` alone."""
    loop = asyncio.get_running_loop()
    waiters = _waiters.get(loop)
    if waiters is None:
        waiters = _waiters[loop] = StepBatch(loop, _resolve_all)
    target: asyncio.Future[T] = loop.create_future()

    def done(src: concurrent.futures.Future[T]) -> None:
        if running_loop() is loop:  # resolved on this loop already (its own listener)
            _copy_state(target, src)
        else:
            waiters.post_threadsafe((target, src))

    source.add_done_callback(done)
    return target


async def run_sync(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking code from a loop on the one thread pool (the loop's default executor)."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))


_Pair = tuple["asyncio.Future[Any]", "concurrent.futures.Future[Any]"]
_waiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StepBatch[_Pair]] = weakref.WeakKeyDictionary()


def _resolve_all(pairs: list[_Pair]) -> None:
    for target, source in pairs:
        _copy_state(target, source)


def _copy_state(target: asyncio.Future[Any], source: concurrent.futures.Future[Any]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
        return
    error = source.exception()
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())
