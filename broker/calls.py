"""The caller's side of the request path: send requests, multiplex their replies.

One :class:`CallClient` per process and Redis: a sender thread flushes queued requests
in one pipeline per wake-up, and a listener thread blocks on the process's inbox list,
where replicas push ``request id + outcome``. Thousands of calls in flight therefore use
two connections, not one per call. A request's outcome also stays under its result key
until its TTL, so a chained call on another replica can read it (see ``watch``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import Future
from typing import Any, Callable, Optional

import redis

from actors.exceptions import BackPressureError, DeploymentUnavailableError

from . import scripts
from .codec import REQUEST_ID_LEN, new_request_id
from .connection import connect
from .keys import Keys

logger = logging.getLogger(__name__)

#: Seconds the listener blocks on its inbox before checking whether it should stop.
LISTEN_BLOCK_S = 1.0
#: Most replies taken from the inbox in one round trip.
REPLY_BATCH = 512

#: What a caller's own future resolves to when the value went only to the result key.
DETACHED = b""

_Op = tuple[Callable[[scripts.Batch], None], Callable[[Any], None]]


class CallClient:
    """Sends requests to deployment queues and resolves their futures."""

    def __init__(self, url: str, keys: Keys, *, result_ttl_ms: int) -> None:
        self.url = url
        self.keys = keys
        self.result_ttl_ms = result_ttl_ms
        self.inbox = keys.inbox(new_request_id())
        self.client_name = f"mqserve-caller-{os.getpid()}"
        self._redis = connect(url, client_name=self.client_name)
        self._lock = threading.Lock()
        self._waiters: dict[str, list[Future[bytes]]] = {}
        self._owners: dict[str, Future[bytes]] = {}
        self._shared: set[str] = set()
        self._unlink: list[str] = []
        self._outbox: list[_Op] = []
        self._loop_pending: dict[asyncio.AbstractEventLoop, list[_Op]] = {}
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._sender = threading.Thread(target=self._send_loop, name="mqserve-sender", daemon=True)
        self._listener = threading.Thread(target=self._listen_loop, name="mqserve-listener", daemon=True)
        self._sender.start()
        self._listener.start()

    # Public ---------------------------------------------------------------------------
    def submit(self, app: str, dep: str, req_id: str, message: bytes,
               consumes: tuple[str, ...] = ()) -> Future[bytes]:
        """Queue ``message`` for deployment ``app/dep``; the future gets its outcome bytes.

        ``consumes`` are ids of responses passed as arguments: their values will go to
        their result keys only, and their own futures resolve to :data:`DETACHED`.
        """
        fut: Future[bytes] = Future()
        qkey, dkey = self.keys.queue(app, dep), self.keys.deployment(app, dep)
        args = (message, self.result_ttl_ms, *(self.keys.detached(r) for r in consumes))

        def add(batch: scripts.Batch) -> None:
            batch.script(scripts.ENQUEUE, (dkey, qkey), args)

        def done(res: Any) -> None:
            if isinstance(res, Exception):
                self._fail(req_id, ConnectionError(f"could not reach Redis to send a request: {res}"))
            elif res == -1:
                self._fail(req_id, DeploymentUnavailableError(
                    f"Deployment '{dep}' of application '{app}' is not running (deleted or never "
                    "started). Deploy it with serve.run() before calling it."))
            elif res == -2:
                self._fail(req_id, BackPressureError(
                    f"Request dropped: deployment '{dep}' of application '{app}' already has "
                    "max_queued_requests requests waiting. Retry later or raise max_queued_requests."))

        with self._lock:
            self._waiters.setdefault(req_id, []).append(fut)
            self._owners[req_id] = fut
            loop = _running_loop()
            if loop is not None:
                # Never block an event loop on Redis: the sender thread pipelines it,
                # together with the other calls this loop makes in the same step.
                self._post_from_loop(loop, add, done)
                return fut
        self._run_here(scripts.ENQUEUE, (dkey, qkey), args, done)
        return fut

    def watch(self, req_id: str) -> Future[bytes]:
        """A future for the outcome of any request, by id (for chained calls)."""
        fut: Future[bytes] = Future()
        rkey, wkey = self.keys.result(req_id), self.keys.watchers(req_id)

        def add(batch: scripts.Batch) -> None:
            batch.script(scripts.WATCH, (rkey, wkey), (self.inbox, self.result_ttl_ms))

        def done(res: Any) -> None:
            if isinstance(res, Exception):
                self._fail(req_id, ConnectionError(f"could not reach Redis to read a result: {res}"))
            elif res is not None:
                self._resolve(req_id, res)

        with self._lock:
            self._waiters.setdefault(req_id, []).append(fut)
            self._shared.add(req_id)
            loop = _running_loop()
            if loop is not None:
                self._post_from_loop(loop, add, done)
                return fut
        self._run_here(scripts.WATCH, (rkey, wkey), (self.inbox, self.result_ttl_ms), done)
        return fut

    def cancel(self, app: str, dep: str, req_id: str, message: bytes) -> Future[bool]:
        """Withdraw a queued request; the future says whether it was withdrawn unrun."""
        fut: Future[bool] = Future()
        qkey, ckey = self.keys.queue(app, dep), self.keys.cancelled(req_id)

        def add(batch: scripts.Batch) -> None:
            batch.script(scripts.CANCEL, (qkey, ckey), (message, self.result_ttl_ms))

        def done(res: Any) -> None:
            fut.set_result(res == 1)

        with self._lock:
            self._post(add, done)
        return fut

    def share(self, req_id: str) -> None:
        """Keep ``req_id``'s result key after its reply arrives: another call reads it."""
        with self._lock:
            self._shared.add(req_id)

    def forget(self, req_id: str) -> None:
        """Stop waiting for ``req_id`` (cancelled or timed out)."""
        with self._lock:
            self._waiters.pop(req_id, None)
            self._owners.pop(req_id, None)

    @property
    def closed(self) -> bool:
        return self._closed

    def in_flight(self) -> int:
        with self._lock:
            return len(self._waiters)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        try:
            self._redis.lpush(self.inbox, b"")
        except redis.RedisError:
            pass
        self._sender.join(timeout=2)
        self._listener.join(timeout=2)
        self._redis.close()

    # Internals ----------------------------------------------------------------------------
    def _post(self, add: Callable[[scripts.Batch], None], done: Callable[[Any], None]) -> None:
        # Caller holds self._lock.
        if self._closed:
            raise RuntimeError("this mqserve client is closed (serve.shutdown() was called)")
        self._outbox.append((add, done))
        if len(self._outbox) == 1:
            self._wake.notify()

    def _post_from_loop(self, loop: asyncio.AbstractEventLoop, add: Callable[[scripts.Batch], None],
                        done: Callable[[Any], None]) -> None:
        """Hold ops made during one step of ``loop`` and hand them over together when the
        step ends, so that calls made back to back share one pipeline."""
        # Caller holds self._lock.
        pending = self._loop_pending.get(loop)
        if pending is None:
            pending = self._loop_pending[loop] = []
            loop.call_soon(self._flush_loop, loop)
        pending.append((add, done))

    def _flush_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            ops = self._loop_pending.pop(loop, [])
            if self._closed:
                return
            self._outbox.extend(ops)
            self._wake.notify()

    def _run_here(self, script: scripts.Script, keys: tuple[str, ...], args: tuple[Any, ...],
                  done: Callable[[Any], None]) -> None:
        """Run a script on the calling thread: a plain thread waits for the reply anyway,
        so sending from here saves a hop through the sender thread."""
        try:
            res = script(self._redis, keys, args)
        except redis.RedisError as e:
            res = e
        done(res)

    def _fail(self, req_id: str, exc: BaseException) -> None:
        with self._lock:
            waiters = self._waiters.pop(req_id, ())
            self._owners.pop(req_id, None)
        for fut in waiters:
            if not fut.done():
                fut.set_exception(exc)

    def _resolve(self, req_id: str, outcome: bytes) -> None:
        with self._lock:
            waiters = self._waiters.pop(req_id, ())
            self._owners.pop(req_id, None)
            if req_id in self._shared:
                self._shared.discard(req_id)
            else:
                self._unlink.append(self.keys.result(req_id))
        for fut in waiters:
            if not fut.done():
                fut.set_result(outcome)

    def _send_loop(self) -> None:
        while True:
            with self._lock:
                while not self._outbox and not self._closed:
                    self._wake.wait()
                if self._closed and not self._outbox:
                    return
                ops, self._outbox = self._outbox, []
            batch = scripts.Batch()
            for add, _ in ops:
                add(batch)
            try:
                results = batch.execute(self._redis)
            except redis.RedisError as e:
                logger.warning("mqserve: sending %d request(s) to Redis failed: %s", len(ops), e)
                results = [e] * len(ops)
            for (_, done), res in zip(ops, results):
                done(res)

    def _listen_loop(self) -> None:
        conn = self._redis
        while not self._closed:
            try:
                item = conn.blpop([self.inbox], timeout=LISTEN_BLOCK_S)
                if item is None:
                    continue
                items: Optional[list[bytes]] = [item[1]]
                while items:
                    for raw in items:
                        self._dispatch(raw)
                    items = self._drain()
            except redis.RedisError as e:
                if not self._closed:
                    logger.warning("mqserve: reply listener lost Redis (%s); reconnecting", e)
                    threading.Event().wait(0.5)

    def _drain(self) -> Optional[list[bytes]]:
        """Delete consumed result keys and take more replies, in one round trip."""
        with self._lock:
            unlink, self._unlink = self._unlink, []
        pipe = self._redis.pipeline(transaction=False)
        if unlink:
            pipe.unlink(*unlink)
        pipe.lpop(self.inbox, REPLY_BATCH)
        return pipe.execute()[-1]

    def _dispatch(self, raw: bytes) -> None:
        if len(raw) < REQUEST_ID_LEN:
            return  # a wake-up from close()
        req_id = raw[:REQUEST_ID_LEN].decode()
        if len(raw) > REQUEST_ID_LEN:
            self._resolve(req_id, raw[REQUEST_ID_LEN:])
            return
        # The value went to the result key only (the response was passed downstream):
        # release the caller's own future; awaiting it reads the key (see watch()).
        with self._lock:
            fut = self._owners.pop(req_id, None)
            waiters = self._waiters.get(req_id)
            if fut is not None and waiters is not None:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[req_id]
        if fut is not None and not fut.done():
            fut.set_result(DETACHED)


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


_clients: dict[tuple[int, str, str], CallClient] = {}
_clients_lock = threading.Lock()


def get_client(url: str, keys: Keys, *, result_ttl_ms: int) -> CallClient:
    """The process's client for ``url`` (a new one after fork)."""
    key = (os.getpid(), url, keys.ns)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = CallClient(url, keys, result_ttl_ms=result_ttl_ms)
        return client


def close_clients() -> None:
    with _clients_lock:
        clients = [c for (pid, _, _), c in _clients.items() if pid == os.getpid()]
        _clients.clear()
    for client in clients:
        client.close()
