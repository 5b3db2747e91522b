"""The caller's side of the request path: send requests, multiplex their replies.

One :class:`CallClient` per process and Redis. Replicas push ``request id + outcome``
to the caller's inbox list; one listener per inbox resolves the futures of any number
of calls in flight, so a process uses a handful of connections, not one per call.

Two ways in, chosen by where the call is made:

- a plain thread sends its request itself (it would wait for the reply anyway), and a
  listener thread serves the process's thread inbox;
- code running on an event loop gets a :class:`~actors.runtime.channel.LoopChannel` for
  that loop: an asyncio connection, an inbox and a listener task of its own. Calls made
  during one step of the loop go out in one pipeline, and their replies resolve on the
  loop itself, with no hop through another thread.

A request's outcome is written under its result key too. The listener deletes that
key once it has delivered the reply, unless the response was passed to another call by
reference: then the downstream replicas read the key (see ``watch``), and it goes when
the last promised read is done (``settle.lua``). The promise is this process's count of
the reads it made possible, sent when the response object is dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from typing import Any

import redis

from broker import calls, clock, codec, epoch, scripts, streams
from broker.codec import REQUEST_ID_LEN, new_request_id
from broker.connection import connect
from broker.keys import Keys

from ..config import BackpressureConfig
from ..exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RequestCancelledError,
    RequestLostError,
    cancelled_error,
)
from . import bridge
from .channel import RECONNECT_PAUSE_S, Add, Done, LoopChannel

logger = logging.getLogger(__name__)

#: What a caller's own future resolves to when the value went only to the result key.
DETACHED = b""


class CallClient:
    """Sends requests to deployment queues and resolves their futures."""

    def __init__(self, url: str, keys: Keys, *, result_ttl_ms: int) -> None:
        self.url = url
        self.keys = keys
        self.result_ttl_ms = result_ttl_ms
        self.inbox = keys.inbox(new_request_id())
        self._inbox = calls.Inbox(self.inbox)
        self.client_name = f"mqserve-caller-{os.getpid()}"
        self._redis = connect(url, client_name=self.client_name)
        clock.sync(self._redis)  # requests are stamped in Redis's time from the first one
        self._lock = threading.Lock()
        #: Futures waiting for a request's outcome, by request id: its caller's own reply
        #: and any number of reads of its result key (``watch``).
        self._waiters: dict[str, list[Future[bytes]]] = {}
        #: The caller's reply future of each unary request sent from here, until it comes.
        #: Only such a reply deletes the result key after delivering it.
        self._owners: dict[str, Future[bytes]] = {}
        #: Responses of this process passed to other calls by reference: how many reads of
        #: their result key this process made possible (consumers plus its own reads). The
        #: key stays while the response lives; see ``release``.
        self._holds: dict[str, int] = {}
        #: Responses dropped by their objects (any thread, even a GC pass: no lock taken),
        #: then settled by the listener on its next round trip.
        self._dropped: deque[str] = deque()
        #: ``settle.lua`` calls for the listener's next round trip: (id, promised or "", reads).
        self._settles: list[tuple[str, str, int]] = []
        self._channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopChannel] = \
            weakref.WeakKeyDictionary()
        self._closed = False
        # Sends that must not be lost with an event loop that is closing (cancellations).
        self._background = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mqserve-send")
        self._listener = threading.Thread(target=self._listen_loop, name="mqserve-listener", daemon=True)
        self._listener.start()

    # Public ---------------------------------------------------------------------------
    def reply_inbox(self) -> str:
        """The inbox replies to a call made here should go to (this loop's, or the threads')."""
        loop = bridge.running_loop()
        return self.inbox if loop is None else self._channel(loop).inbox

    def submit(self, app: str, dep: str, req_id: str, message: bytes,
               consumes: tuple[str, ...] = (), *, expect_reply: bool = True) -> Future[bytes]:
        """Queue ``message`` for deployment ``app/dep``; the future gets its outcome bytes.

        ``consumes`` are ids of responses passed as arguments (see :meth:`pass_on`):
        their values will go to their result keys only, and their own futures resolve
        to :data:`DETACHED`. Without ``expect_reply`` (streamed calls) the future
        resolves once the request is queued.
        """
        fut: Future[bytes] = Future()

        def add(batch: scripts.Batch) -> None:
            calls.enqueue(batch, self.keys, app, dep, req_id, message, consumes, self.result_ttl_ms)

        def done(res: Any) -> None:
            if isinstance(res, Exception):
                # Perhaps queued after all: its consumed responses may still be read.
                self._not_run(req_id, (), ConnectionError(f"could not reach Redis to send a request: {res}"))
            elif (refused := calls.refusal(res)) is not None:
                self._not_run(req_id, consumes, _refusal(*refused, app, dep, req_id))
            elif not expect_reply:
                self._deliver(req_id, b"")

        with self._lock:
            self._check_open()
            self._waiters.setdefault(req_id, []).append(fut)
            if expect_reply:
                self._owners[req_id] = fut
        self._send(add, done)
        return fut

    def pass_on(self, req_id: str, fut: Future[bytes]) -> bytes | None:
        """A response of this process is passed to another call: its outcome, to travel
        inline, if it has come; else None, and the call reads the result key itself
        (the id goes in its ``consumes``), which stays until :meth:`release`."""
        with self._lock:
            if req_id in self._owners or req_id in self._holds:
                self._holds[req_id] = self._holds.get(req_id, 0) + 1
                return None
        # The reply was delivered or the call failed (its future is being set right now,
        # at worst by the listener thread).
        try:
            outcome = fut.result()
        except concurrent.futures.CancelledError:
            return codec.encode_error(cancelled_error(req_id))
        except Exception as e:
            return codec.encode_error(e)
        return outcome

    def release(self, req_id: str) -> None:
        """A response passed on by reference was dropped: nothing here reads its key any
        more. Safe from any thread and from ``__del__`` (takes no lock)."""
        self._dropped.append(req_id)

    def watch(self, req_id: str, *, own: bool = False) -> Future[bytes]:
        """A future for the outcome of any request, by id: a chained call's argument, or
        (``own``) this process's response that was passed on and whose value went only to
        its result key. Every watch is one of the reads the caller promised."""
        fut: Future[bytes] = Future()
        inbox = self.reply_inbox()

        def add(batch: scripts.Batch) -> None:
            calls.watch(batch, self.keys, req_id, inbox, self.result_ttl_ms)

        def done(res: Any) -> None:
            if isinstance(res, Exception):
                self._fail(req_id, ConnectionError(f"could not reach Redis to read a result: {res}"))
            elif res is not None:
                self._deliver(req_id, res)

        with self._lock:
            self._check_open()
            self._waiters.setdefault(req_id, []).append(fut)
            if own:
                self._holds[req_id] = self._holds.get(req_id, 0) + 1
        self._send(add, done)
        return fut

    def cancel(self, app: str, dep: str, req_id: str, message: bytes, consumes: tuple[str, ...] = ()) -> None:
        """Withdraw a queued request (it never runs), or flag a taken one as cancelled: the
        replica checks the flag before it starts the request and cancels it if running."""
        with self._lock:  # nobody here waits for its reply any more (it may never be read)
            self._owners.pop(req_id, None)
            self._waiters.pop(req_id, None)
            held = req_id in self._holds

        def add(batch: scripts.Batch) -> None:
            calls.cancel(batch, self.keys, app, dep, req_id, message, self.result_ttl_ms, held=held)

        def done(res: Any) -> None:
            if res == 1:
                self._not_run(req_id, consumes, cancelled_error(req_id))

        self._send(add, done, outlive_loop=True)

    def withdraw(self, app: str, dep: str, req_id: str, message: bytes, consumes: tuple[str, ...] = ()) -> None:
        """Take back a request no replica has taken yet (its caller gave up waiting); its
        future then fails with ``RequestCancelledError``. One already running is left alone."""
        def add(batch: scripts.Batch) -> None:
            calls.withdraw(batch, self.keys, app, dep, message)

        def done(res: Any) -> None:
            if res == 1:
                self._not_run(req_id, consumes, RequestCancelledError(
                    f"Request {req_id} was withdrawn unrun: its caller timed out before a replica took it."))

        self._send(add, done, outlive_loop=True)

    def stream_entries(self, req_id: str, stopped: Callable[[], bool]) -> Iterator[dict[bytes, bytes]]:
        """Entries of a streamed response, from this thread (blocks in XREAD)."""
        return streams.read(self._redis, self.keys, req_id, stopped)

    def stream_entries_async(self, req_id: str, stopped: Callable[[], bool]) -> AsyncIterator[dict[bytes, bytes]]:
        """Entries of a streamed response, on the running event loop."""
        channel = self._channel(asyncio.get_running_loop())
        return streams.read_async(channel.redis, self.keys, req_id, stopped)

    def end_stream(self, req_id: str, *, cancel: bool) -> None:
        """Delete a stream after reading it; ``cancel`` asks its writer to stop first."""
        loop = bridge.running_loop()
        if loop is None:
            streams.stop_reading(self._redis, self.keys, req_id, cancel=cancel, ttl_ms=self.result_ttl_ms)
        else:
            loop.create_task(streams.stop_reading_async(self._channel(loop).redis, self.keys, req_id,
                                                        cancel=cancel, ttl_ms=self.result_ttl_ms))

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            channels = list(self._channels.values())
        for channel in channels:
            channel.close()
        try:
            self._inbox.wake(self._redis)
        except redis.RedisError:
            pass
        self._listener.join(timeout=2)
        try:
            self._settle(self._take_settles())
        except redis.RedisError:
            pass
        self._background.shutdown(wait=True)
        self._redis.close()

    # Sending ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this mqserve client is closed (serve.shutdown() was called)")

    def _channel(self, loop: asyncio.AbstractEventLoop) -> LoopChannel:
        with self._lock:
            channel = self._channels.get(loop)
            if channel is None or channel.stopped:
                channel = self._channels[loop] = LoopChannel(self, loop)
            return channel

    def _send(self, add: Add, done: Done, *, outlive_loop: bool = False) -> None:
        """Run ``add``'s commands and pass the result to ``done``. ``outlive_loop``: the
        command must be sent even if the calling event loop closes right away (a
        cancellation as ``asyncio.run`` ends), so it goes through a thread instead."""
        loop = bridge.running_loop()
        if loop is not None:
            # Never block an event loop on Redis.
            if outlive_loop:
                self._background.submit(self._send_now, add, done)
            else:
                self._channel(loop).post(add, done)
            return
        # A plain thread would wait for the reply anyway: send from here.
        self._send_now(add, done)

    def _send_now(self, add: Add, done: Done) -> None:
        batch = scripts.Batch()
        add(batch)
        try:
            res = batch.execute(self._redis)[0]
        except redis.RedisError as e:
            res = e
        done(res)

    # Receiving ----------------------------------------------------------------------------
    def _fail(self, req_id: str, exc: BaseException) -> bool:
        """Fail every waiter of ``req_id``; True if the response was passed on by reference."""
        with self._lock:
            waiters = self._waiters.pop(req_id, ())
            self._owners.pop(req_id, None)
            held = req_id in self._holds
        for fut in waiters:
            if not fut.done():
                fut.set_exception(exc)
        return held

    def _not_run(self, req_id: str, consumes: tuple[str, ...], exc: BaseException) -> None:
        """A request that will never run (refused, withdrawn): its caller gets ``exc``, and
        so does every call it was passed to, through its result key; the responses it
        consumed will not be read by it."""
        with self._lock:
            for ref in consumes:
                if ref in self._holds:
                    self._holds[ref] -= 1
                else:  # already released: count the read that will not happen
                    self._settles.append((ref, "", 1))
        if self._fail(req_id, exc):
            outcome = codec.encode_error(exc)

            def add(batch: scripts.Batch) -> None:
                calls.fail(batch, self.keys, req_id, outcome, self.result_ttl_ms)

            self._send(add, lambda res: None, outlive_loop=True)

    def _fail_if_lost(self, data: _DataLossWatch) -> None:
        """If Redis restarted without its data, no pending call will be answered: say so."""
        if not data.lost():
            return
        exc = RequestLostError("Redis restarted without persistence while this request was pending; it may or "
                               "may not have run, and its answer is lost. Call again if that is safe.")
        with self._lock:
            pending = list(self._waiters)
            self._holds.clear()  # their keys are gone
        for req_id in pending:
            self._fail(req_id, exc)
        if pending:
            logger.warning("mqserve: %d pending request(s) lost with Redis's data", len(pending))

    def _deliver(self, req_id: str, outcome: bytes) -> str | None:
        """Resolve every waiter of ``req_id``; returns its result key if nobody else needs
        it: this was the caller's own reply, and the response was not passed on."""
        with self._lock:
            waiters = self._waiters.pop(req_id, ())
            owned = self._owners.pop(req_id, None) is not None
            unlink = owned and req_id not in self._holds
        for fut in waiters:
            if not fut.done():
                fut.set_result(outcome)
        return self.keys.result(req_id) if unlink else None

    def _take_settles(self) -> list[tuple[str, str, int]]:
        """What the listener sends next: reads promised for responses dropped since its
        last round, and reads that will not happen."""
        with self._lock:
            while self._dropped:
                req_id = self._dropped.popleft()
                promised = self._holds.pop(req_id, None)
                if promised is None:
                    continue
                self._drop_owner(req_id)  # nobody waits for its reply, which must not delete the key
                self._settles.append((req_id, str(promised), 0))
            settles, self._settles = self._settles, []
        return settles

    def dispatch(self, raw: bytes) -> str | None:
        """Handle one inbox item; returns a result key the listener should delete."""
        if len(raw) < REQUEST_ID_LEN:
            return None  # a wake-up from close()
        req_id = raw[:REQUEST_ID_LEN].decode()
        if len(raw) > REQUEST_ID_LEN:
            return self._deliver(req_id, raw[REQUEST_ID_LEN:])
        # The value went to the result key only (the response was passed downstream):
        # release the caller's own future; awaiting it reads the key (watch(own=True)).
        with self._lock:
            fut = self._drop_owner(req_id)
        if fut is not None and not fut.done():
            fut.set_result(DETACHED)
        return None

    def _drop_owner(self, req_id: str) -> Future[bytes] | None:
        """Stop tracking the caller's own reply future of ``req_id`` (under the lock); its
        other waiters (reads of the result key) stay."""
        owner = self._owners.pop(req_id, None)
        waiters = self._waiters.get(req_id)
        if owner is not None and waiters is not None and owner in waiters:
            waiters.remove(owner)
            if not waiters:
                del self._waiters[req_id]
        return owner

    def _settle(self, settles: list[tuple[str, str, int]]) -> None:
        if not settles:
            return
        batch = scripts.Batch()
        for req_id, promised, reads in settles:
            calls.settle(batch, self.keys, req_id, promised, reads, self.result_ttl_ms)
        try:
            batch.execute(self._redis)
        except redis.RedisError:
            with self._lock:
                self._settles[:0] = settles  # again on the next round
            raise

    def _listen_loop(self) -> None:
        inbox = self._inbox
        data = _DataLossWatch(self._redis, self.keys)
        while not self._closed:
            try:
                inbox.beat(self._redis)
                self._fail_if_lost(data)
                self._settle(self._take_settles())
                items = inbox.first(inbox.wait(self._redis))
                while items:
                    unlink = [k for k in map(self.dispatch, items) if k]
                    items = inbox.taken(inbox.drain(self._redis, unlink))
                    self._fail_if_lost(data)  # also while replies keep coming
                    self._settle(self._take_settles())
            except redis.RedisError as e:
                inbox.reset()
                if not self._closed:
                    logger.warning("mqserve: reply listener lost Redis (%s); reconnecting", e)
                    threading.Event().wait(RECONNECT_PAUSE_S)
        try:
            inbox.leave(self._redis)
        except redis.RedisError:
            pass


class _DataLossWatch:
    """Asks, at most every ``calls.ALIVE_REFRESH_S``, whether Redis restarted without its
    data since the last look (see :mod:`broker.epoch`)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client, self.keys = client, keys
        self.run_id: str | None = None
        self.at = 0.0

    def lost(self) -> bool:
        if time.monotonic() - self.at < calls.ALIVE_REFRESH_S:
            return False
        self.at = time.monotonic()
        lost, self.run_id = epoch.check(self.client, self.keys, self.run_id)
        return lost


def _refusal(code: int, details: list[Any], app: str, dep: str, req_id: str) -> Exception:
    """The error of a request ``enqueue.lua`` refused with ``code`` (and ``details``)."""
    if code == -2:
        queued, max_queued, config = details
        answer = BackpressureConfig.parse(config)
        return BackPressureError(
            int(queued), int(max_queued), answer.status_code, answer.retry_after_s,
            f"Deployment '{dep}' of application '{app}' already has max_queued_requests requests "
            "waiting; retry later, or raise max_queued_requests.")
    if code == -3:
        return DeploymentUnavailableError(
            f"Deployment '{dep}' of application '{app}' failed to start, so it cannot take "
            "requests; serve.status() says why. Fix it and deploy again.")
    if code == -4:
        return cancelled_error(req_id)
    return DeploymentUnavailableError(
        f"Deployment '{dep}' of application '{app}' is not running (deleted or never "
        "started). Deploy it with serve.run() before calling it.")


_clients: dict[tuple[int, str, str, int], CallClient] = {}
_clients_lock = threading.Lock()


def get_client(url: str, keys: Keys, *, result_ttl_ms: int) -> CallClient:
    """The process's client for ``url`` and these settings (a new one after fork)."""
    key = (os.getpid(), url, keys.ns, result_ttl_ms)
    with _clients_lock:
        client = _clients.get(key)
        if client is None or client.closed:
            client = _clients[key] = CallClient(url, keys, result_ttl_ms=result_ttl_ms)
        return client


def close_clients() -> None:
    with _clients_lock:
        clients = [c for (pid, *_), c in _clients.items() if pid == os.getpid()]
        _clients.clear()
    for client in clients:
        client.close()
