"""The caller's side of the request path: send requests, multiplex their replies.

One :class:`CallClient` per process and Redis. Replicas push ``request id + outcome``
to the caller's inbox list; one listener per inbox resolves the futures of any number
of calls in flight, so a process uses a handful of connections, not one per call. A
plain thread sends its request itself (it would wait for the reply anyway); code on an
event loop gets a :class:`~actors.runtime.channel.LoopChannel` (connection, inbox and
listener task of its own), whose calls go out at once (:mod:`actors.runtime.sender`)
and whose replies resolve on the loop itself.

The listener deletes a result key once it delivered the reply, unless the response was
passed to another call by reference: then it goes with the last read promised
(``settle.lua``) once the response is dropped (the records: :mod:`actors.runtime.pending`).
Background requests' results are never deleted (``runtime.background``). Every command
goes through the client's :class:`~broker.calls.Transport` (Redis, or a fake in tests).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from typing import Any

import redis

from broker import background, calls, clock, codec, epoch, scripts, streams
from broker.codec import REQUEST_ID_LEN, new_request_id
from broker.keys import Keys

from ..config import BackpressureConfig
from ..exceptions import RequestCancelledError, RequestLostError, RequestNotFoundError, cancelled_error, refused_error
from . import bridge
from .channel import LoopChannel
from .pending import PendingRequests, Settle
from .sender import RECONNECT_PAUSE_S, Add, Done

logger = logging.getLogger(__name__)

#: What a caller's own future resolves to when the value went only to the result key.
DETACHED = b""


class CallClient:
    """Sends requests to deployment queues and resolves their futures."""

    def __init__(self, url: str, keys: Keys, *, result_ttl_ms: int, transport: calls.Transport | None = None) -> None:
        self.url = url
        self.keys = keys
        self.result_ttl_ms = result_ttl_ms
        self.inbox = keys.inbox(new_request_id())
        self._inbox = calls.Inbox(self.inbox)
        self.client_name = f"mqserve-caller-{os.getpid()}"
        self.transport = transport or calls.Transport.for_url(url, client_name=self.client_name)
        self._redis = self.transport.redis
        clock.sync(self._redis)  # requests are stamped in Redis's time from the first one
        self._lock = threading.Lock()  # the channels, and closing
        self._pending = PendingRequests()
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

    def submit(self, app: str, dep: str, req_id: str, message: bytes, consumes: tuple[str, ...] = (), *,
               expect_reply: bool = True, model: str = "", via: Add | None = None) -> Future[bytes]:
        """Queue ``message`` for deployment ``app/dep``; the future gets its outcome bytes.

        ``consumes`` are ids of responses passed as arguments (see :meth:`pass_on`):
        their values will go to their result keys only, and their own futures resolve
        to :data:`DETACHED`. Without ``expect_reply`` (streamed and background calls) the
        future resolves once the request is queued. ``model``: its multiplexed model id,
        by which a multiplexing deployment routes it. ``via``: the commands that queue it,
        if not ``enqueue.lua`` alone (a background request's, ``runtime.background``).
        """
        fut: Future[bytes] = Future()

        def add(batch: scripts.Batch) -> None:
            if via is not None:
                via(batch)
            else:
                calls.enqueue(batch, self.keys, app, dep, req_id, message, consumes, self.result_ttl_ms, model)

        def done(res: Any) -> None:
            if isinstance(res, Exception):
                # Perhaps queued after all: its consumed responses may still be read.
                self._not_run(req_id, (), ConnectionError(f"could not reach Redis to send a request: {res}"))
            elif (refused := calls.refusal(res)) is not None:
                self._not_run(req_id, consumes, _refused(*refused, app, dep, req_id))
            elif not expect_reply:
                self._deliver(req_id, b"")

        self._check_open()
        self._pending.add(req_id, fut, owner=expect_reply)
        self.send(add, done)
        return fut

    def pass_on(self, req_id: str, fut: Future[bytes]) -> bytes | None:
        """A response of this process is passed to another call: its outcome, to travel
        inline, if it has come; else None, and the call reads the result key itself
        (the id goes in its ``consumes``), which stays until :meth:`release`."""
        if self._pending.pass_on(req_id):
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
        self._pending.drop(req_id)

    def watch(self, req_id: str, *, own: bool = False, kept: bool = False) -> Future[bytes]:
        """A future for the outcome of any request, by id: a chained call's argument, or
        (``own``) this process's response that was passed on and whose value went only to
        its result key. Every watch is one of the reads the caller promised. ``kept``: a
        background request's, which no read deletes (an unknown id fails the future)."""
        fut: Future[bytes] = Future()
        inbox = self.reply_inbox()

        def add(batch: scripts.Batch) -> None:
            (background.read if kept else calls.watch)(batch, self.keys, req_id, inbox, self.result_ttl_ms)

        def done(res: Any) -> None:
            if isinstance(res, Exception):
                self._fail(req_id, ConnectionError(f"could not reach Redis to read a result: {res}"))
            elif isinstance(res, int):  # bg_read.lua: unknown, or expired
                self._fail(req_id, RequestNotFoundError.expired(req_id))
            elif res is not None:
                self._deliver(req_id, res)

        self._check_open()
        self._pending.add(req_id, fut, promise=own)
        self.send(add, done)
        return fut

    def cancel(self, app: str, dep: str, req_id: str, message: bytes, consumes: tuple[str, ...] = ()) -> None:
        """Withdraw a queued request (it never runs), or flag a taken one as cancelled: the
        replica checks the flag before it starts the request and cancels it if running."""
        _, _, held = self._pending.finish(req_id)  # nobody here waits for its reply any more (it may never be read)

        def add(batch: scripts.Batch) -> None:
            calls.cancel(batch, self.keys, app, dep, req_id, message, self.result_ttl_ms, held=held)

        def done(res: Any) -> None:
            if res == 1:
                self._not_run(req_id, consumes, cancelled_error(req_id))

        self.send(add, done, outlive_loop=True)

    def withdraw(self, app: str, dep: str, req_id: str, message: bytes, consumes: tuple[str, ...] = ()) -> None:
        """Take back a request no replica has taken yet (its caller gave up waiting); its
        future then fails with ``RequestCancelledError``. One already running is left alone."""
        def add(batch: scripts.Batch) -> None:
            calls.withdraw(batch, self.keys, app, dep, message)

        def done(res: Any) -> None:
            if res == 1:
                self._not_run(req_id, consumes, RequestCancelledError(
                    f"Request {req_id} was withdrawn unrun: its caller timed out before a replica took it."))

        self.send(add, done, outlive_loop=True)

    def stream_entries(self, req_id: str, stopped: Callable[[], bool]) -> Iterator[dict[bytes, bytes]]:
        """Entries of a streamed response, from this thread (blocks in XREAD)."""
        cursor = streams.Cursor(self.keys.stream(req_id))
        while not stopped():
            yield from cursor.entries(self._redis.xread(**cursor.xread_args()))

    async def stream_entries_async(self, req_id: str, stopped: Callable[[], bool]) -> AsyncIterator[dict[bytes, bytes]]:
        """Entries of a streamed response, on the running event loop."""
        conn = self._channel(asyncio.get_running_loop()).redis
        cursor = streams.Cursor(self.keys.stream(req_id))
        while not stopped():
            for fields in cursor.entries(await conn.xread(**cursor.xread_args())):
                yield fields

    def end_stream(self, req_id: str, *, cancel: bool) -> None:
        """Delete a stream after reading it; ``cancel`` asks its writer to stop first.
        Sent as cancellations are (see :meth:`_send`): a reader on an event loop often
        ends as its loop does (the last ``async for`` of an ``asyncio.run``), and nobody
        waits for this."""
        if self._closed:  # its sender is gone; the stream expires with the result TTL
            return

        def add(batch: scripts.Batch) -> None:
            streams.stop_reading(batch, self.keys, req_id, cancel=cancel, ttl_ms=self.result_ttl_ms)

        def done(res: Any) -> None:
            if isinstance(res, Exception):  # the stream expires with the result TTL; its writer goes on
                logger.warning("mqserve: could not end stream %s (%s)", req_id, res)

        self.send(add, done, outlive_loop=True)

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
            self._settle(self._pending.take_settles())
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

    def send(self, add: Add, done: Done, *, outlive_loop: bool = False) -> None:
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
        waiters, _, passed_on = self._pending.finish(req_id)
        for fut in waiters:
            if not fut.done():
                fut.set_exception(exc)
        return passed_on

    def _not_run(self, req_id: str, consumes: tuple[str, ...], exc: BaseException) -> None:
        """A request that will never run (refused, withdrawn): its caller gets ``exc``, and
        so does every call it was passed to, through its result key; the responses it
        consumed will not be read by it."""
        self._pending.unread(consumes)
        if self._fail(req_id, exc):
            outcome = codec.encode_error(exc)

            def add(batch: scripts.Batch) -> None:
                calls.fail(batch, self.keys, req_id, outcome, self.result_ttl_ms)

            self.send(add, lambda res: None, outlive_loop=True)

    def _fail_if_lost(self, data: epoch.Watch) -> None:
        """If Redis restarted without its data, no pending call will be answered: say so."""
        if not data.lost():
            return
        exc = RequestLostError("Redis restarted without persistence while this request was pending; it may or "
                               "may not have run, and its answer is lost. Call again if that is safe.")
        lost = self._pending.lose_all()
        for waiters in lost:
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(exc)
        if lost:
            logger.warning("mqserve: %d pending request(s) lost with Redis's data", len(lost))

    def _deliver(self, req_id: str, outcome: bytes) -> str | None:
        """Resolve every waiter of ``req_id``; returns its result key if nobody else needs
        it: this was the caller's own reply, and the response was not passed on."""
        waiters, unlink, _ = self._pending.finish(req_id)
        for fut in waiters:
            if not fut.done():
                fut.set_result(outcome)
        return self.keys.result(req_id) if unlink else None

    def dispatch(self, raw: bytes) -> str | None:
        """Handle one inbox item; returns a result key the listener should delete."""
        if len(raw) < REQUEST_ID_LEN:
            return None  # a wake-up from close()
        req_id = raw[:REQUEST_ID_LEN].decode()
        if len(raw) > REQUEST_ID_LEN:
            return self._deliver(req_id, raw[REQUEST_ID_LEN:])
        # The value went to the result key only (the response was passed downstream):
        # release the caller's own future; awaiting it reads the key (watch(own=True)).
        fut = self._pending.detach(req_id)
        if fut is not None and not fut.done():
            fut.set_result(DETACHED)
        return None

    def _settle(self, settles: list[Settle]) -> None:
        if not settles:
            return
        batch = scripts.Batch()
        for req_id, promised, reads in settles:
            calls.settle(batch, self.keys, req_id, promised, reads, self.result_ttl_ms)
        try:
            batch.execute(self._redis)
        except redis.RedisError:
            self._pending.retry(settles)
            raise

    def _listen_loop(self) -> None:
        inbox = self._inbox
        data = epoch.Watch(self._redis, self.keys, calls.ALIVE_REFRESH_S)
        while not self._closed:
            try:
                inbox.beat(self._redis)
                self._fail_if_lost(data)
                self._settle(self._pending.take_settles())
                items = inbox.first(inbox.wait(self._redis))
                while items:
                    unlink = [k for k in map(self.dispatch, items) if k]
                    items = inbox.taken(inbox.drain(self._redis, unlink))
                    self._fail_if_lost(data)  # also while replies keep coming
                    self._settle(self._pending.take_settles())
            except redis.RedisError as e:
                inbox.reset()
                if not self._closed:
                    logger.warning("mqserve: reply listener lost Redis (%s); reconnecting", e)
                    threading.Event().wait(RECONNECT_PAUSE_S)
        try:
            inbox.leave(self._redis)
        except redis.RedisError:
            pass


def _refused(code: int, details: list[Any], app: str, dep: str, req_id: str) -> Exception:
    """The error of a request ``enqueue.lua`` refused with ``code``; a refusal for
    backpressure comes with the queue's length, its limit and the deployment's config,
    which says how to answer it (``backpressure_config``)."""
    if code != -2 or len(details) != 3:
        return refused_error(code, app, dep, req_id)
    queued, max_queued, config = details
    answer = BackpressureConfig.parse(config)
    return refused_error(code, app, dep, req_id, queued=int(queued), max_queued=int(max_queued),
                         status_code=answer.status_code, retry_after_s=answer.retry_after_s)


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
