"""A Dramatiq broker whose consumer blocks on Redis instead of polling.

Dramatiq's stock ``RedisBroker`` sleeps up to a second between empty fetches, which is
the whole latency budget of a serving request. Here a replica's
consumer takes a message with ``BLMOVE queue -> processing list``: the command returns
the moment a caller pushes, and the message stays in Redis (in the replica's processing
list) until the outcome is written, so a dead replica's work can be found and requeued.

The consumer never holds more than ``prefetch`` unfinished messages; set it to the
replica's concurrency so queued work stays in Redis where any idle replica can take it.

A replica of a multiplexed deployment (``route``, see :mod:`broker.mux`) takes from its
own queue, then from the deployment's, and blocks on its own queue, where requests for
it are routed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import dramatiq
import redis
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.errors import BrokerConnectionError

from . import background, clock, codec, mux, scripts
from .connection import connect
from .keys import Keys

logger = logging.getLogger(__name__)

#: Seconds a request may wait in the queue before its replica checks that the caller
#: is still there (see ``Keys.alive``).
ABANDONED_CHECK_S = 5.0


#: The outcome of a streamed request: its items and errors went to its stream.
STREAMED = b""

#: A taken message (as the actor got it) and its encoded outcome.
Done = tuple[Any, bytes]


class _Proxy(MessageProxy):
    """A message plus the exact bytes it was queued as (needed to remove it by value).

    The actor sets ``deferred``: the message then keeps its slot until the replica's
    outcome writer writes its outcome with :meth:`ServeBroker.complete` or
    :meth:`ServeBroker.complete_async`. A message the ack finds not deferred is one whose
    actor failed before it could hand its outcome over.
    """

    def __init__(self, message: dramatiq.Message[Any], raw: bytes) -> None:
        super().__init__(message)
        self.raw = raw
        self.deferred = False


class ServeBroker(dramatiq.Broker):
    """The broker of one replica: one deployment queue, one processing list.

    Parameters:
      url: Redis URL.
      keys: key layout of the namespace.
      queue_key: the deployment's queue (LIST).
      processing_key: this replica's processing list.
      result_ttl_ms: lifetime of result keys.
      route: the replica's place in its deployment's routing, if the deployment multiplexes.
    """

    def __init__(self, url: str, keys: Keys, *, queue_key: str, processing_key: str, result_ttl_ms: int,
                 middleware: list[dramatiq.Middleware] | None = None, route: mux.Membership | None = None) -> None:
        super().__init__(middleware=middleware or [])
        self.url = url
        self.keys = keys
        self.queue_key = queue_key
        self.processing_key = processing_key
        self.result_ttl_ms = result_ttl_ms
        self.client = connect(url)
        self.queues: set[str] = set()
        self.draining = threading.Event()
        self.route = route
        #: Set by the replica: starts a taken message at once on the consumer's thread
        #: when it can (True), instead of handing it to a Dramatiq worker thread. For a
        #: call that only schedules work on the event loop, the worker thread's hop is
        #: the largest cost left on a replica.
        self.start_here: Callable[[_Proxy], bool] | None = None

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 1000) -> Consumer:
        self.consumer = _BlockingConsumer(self, prefetch=prefetch, timeout_ms=timeout)
        if self.route is not None:
            self.route.join(self.client)
        return self.consumer

    def drain(self, timeout_s: float, check_every_s: float) -> bool:
        """Stop taking messages, put back those taken but not started, and wait up to
        ``timeout_s`` for the rest (async work included) to finish. True if all did.

        The wait ends as soon as the last request finishes; every ``check_every_s``
        (Ray's ``graceful_shutdown_wait_loop_s``) it also checks again and logs what
        it still waits for, as a Ray replica does."""
        self.draining.set()
        consumer = getattr(self, "consumer", None)
        return True if consumer is None else consumer.wait_idle(timeout_s, check_every_s)

    def complete(self, done: Sequence[Done]) -> bool:
        """Write the outcomes of deferred requests in one round trip and free their slots.

        False if Redis is unreachable: nothing was freed, try again later. Other errors
        are not retried and the slots are freed, so that no outcome holds a slot forever."""
        try:
            results = self._completion(done).execute(self.client)
        except redis.RedisError as e:
            results = [e]
        return self._completed(done, results, redis.ConnectionError)

    async def complete_async(self, client: Any, done: Sequence[Done]) -> bool:
        """The same on a ``redis.asyncio`` client (the event loop's own connection)."""
        try:
            results = await self._completion(done).execute_async(client)
        except (redis.RedisError, OSError) as e:
            results = [e]
        return self._completed(done, results, (redis.ConnectionError, OSError))

    def started(self, message: Any, app: str, dep: str) -> None:
        """A background request starts: its status record says RUNNING before user code
        runs (the one round trip background requests add; see ``broker.background``)."""
        try:
            background.started(self.client, self.keys, message.message_id,
                               attempt=int(message.options.get("attempt", 0)) + 1,
                               ttl_ms=background.ttl_of(message.options), app=app, dep=dep,
                               method=message.args[0] if message.args else "")
        except redis.RedisError as e:  # its outcome will still be written; only its status lags
            logger.warning("mqserve: could not mark background request %s RUNNING: %s", message.message_id, e)

    def _queue_complete(self, batch: scripts.Batch, message: Any, outcome: bytes) -> None:
        """Add ``complete.lua`` for one taken message to ``batch`` (``bg_complete.lua`` for
        a background request: its outcome is kept, and its record ends)."""
        ttl_ms = background.ttl_of(message.options)
        if ttl_ms:
            background.complete(batch, self.keys, message.message_id, outcome, processing_key=self.processing_key,
                                raw=message.raw, ttl_ms=ttl_ms, inbox_ttl_ms=self.result_ttl_ms)
            return
        scripts.complete(batch, self.keys, message.message_id, outcome,
                         reply_to=message.options.get("reply_to", ""), processing_key=self.processing_key,
                         raw=message.raw, ttl_ms=self.result_ttl_ms, publish=outcome != STREAMED)

    def _completion(self, done: Sequence[Done]) -> scripts.Batch:
        batch = scripts.Batch()
        for message, outcome in done:
            self._queue_complete(batch, message, outcome)
        return batch

    def _completed(self, done: Sequence[Done], results: list[Any],
                   unreachable: type[Exception] | tuple[type[Exception], ...]) -> bool:
        if any(isinstance(r, unreachable) for r in results):
            return False
        self.consumer.release(len(done))
        return True

    def declare_queue(self, queue_name: str) -> None:
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.queues.add(queue_name)
            self.emit_after("declare_queue", queue_name)

    def get_declared_queues(self) -> set[str]:
        return set(self.queues)

    def get_declared_delay_queues(self) -> set[str]:
        return set()

    def flush(self, queue_name: str) -> None:
        self.client.delete(self.queue_key)

    def flush_all(self) -> None:
        self.client.delete(self.queue_key, self.processing_key)

    def join(self, queue_name: str, *, timeout: int | None = None) -> None:  # pragma: no cover
        raise NotImplementedError("join is not used by mqserve replicas")

    def close(self) -> None:
        self.client.close()


class _BlockingConsumer(Consumer):
    def __init__(self, broker: ServeBroker, *, prefetch: int, timeout_ms: int) -> None:
        self.broker = broker
        self.prefetch = prefetch
        self.timeout_s = timeout_ms / 1000
        # A connection of its own: BLMOVE holds it while blocked.
        self.conn = connect(broker.url, max_connections=1)
        self.unfinished = 0
        self.slots = threading.Condition()
        self.taken: deque[_Proxy] = deque()  # taken from Redis, not yet handed to Dramatiq
        self.busy = False  # the last fetch found work: try a batch next
        self.looked = False  # (multiplexed) both queues were empty at the last look

    def __next__(self) -> MessageProxy | None:
        if self.taken and not self.broker.draining.is_set():
            return self.taken.popleft()
        with self.slots:
            if self._full():
                self.slots.wait(self.timeout_s)
                if self._full():
                    return None
            free = self.prefetch - self.unfinished
        try:
            raws = self._fetch(free) if self.broker.route is None else self._fetch_routed(free)
        except redis.RedisError as e:
            raise BrokerConnectionError(str(e)) from e
        if raws and self.broker.draining.is_set():
            # Stopping: whatever a blocked fetch returned goes back for another replica.
            self._put_back(raws)
            return None
        decoded = [(raw, self._decode(raw)) for raw in raws]
        messages = [(raw, m) for raw, m in decoded if m is not None]
        start_here = self.broker.start_here
        for raw, message in self._without_abandoned(messages):
            with self.slots:
                self.unfinished += 1
            proxy = _Proxy(message, raw)
            if start_here is None or not start_here(proxy):
                self.taken.append(proxy)
        return self.taken.popleft() if self.taken else None

    def _fetch(self, free: int) -> list[bytes]:
        if self.busy and free > 1 and self.unfinished > 1:
            # Under load, take what is waiting in one round trip instead of one
            # BLMOVE per message; when nothing waits, go back to blocking. With a
            # single request in hand the load is sequential: skip the extra round
            # trip, which would only compete with that request for the GIL.
            raws: list[bytes] = scripts.TAKE(self.conn, (self.broker.processing_key, self.broker.queue_key), (free,))
            self.busy = bool(raws)
            return raws
        raw = self.conn.blmove(self.broker.queue_key, self.broker.processing_key,
                               self.timeout_s, "RIGHT", "LEFT")  # type: ignore[arg-type]  # redis-py types the timeout as int; Redis takes fractional seconds
        self.busy = raw is not None
        return [cast(bytes, raw)] if raw is not None else []

    def _fetch_routed(self, free: int) -> list[bytes]:
        """A replica of a multiplexed deployment: its own queue, then the deployment's,
        and only once both were empty, block on its own. Requests wait in the
        deployment's queue only while every replica is full (``mux.lua``), so one that
        has a free slot always looks there before it sleeps: none waits while it idles."""
        route = self.broker.route
        assert route is not None
        if not self.looked:
            raws: list[bytes] = scripts.TAKE(
                self.conn, (self.broker.processing_key, route.own_queue, self.broker.queue_key), (free,))
            self.looked = not raws
            return raws
        raw = self.conn.blmove(route.own_queue, self.broker.processing_key,
                               self.timeout_s, "RIGHT", "LEFT")  # type: ignore[arg-type]  # redis-py types the timeout as int; Redis takes fractional seconds
        self.looked = False  # a request came, or a second passed: look at both again
        return [cast(bytes, raw)] if raw is not None else []

    def _decode(self, raw: bytes) -> dramatiq.Message[Any] | None:
        try:
            return dramatiq.Message(**codec.decode_request(raw))
        except Exception:
            logger.error("mqserve: dropping a message that is not an mqserve request (or is forged)",
                         exc_info=True)
            self.broker.client.lrem(self.broker.processing_key, 1, raw)  # type: ignore[arg-type]  # redis-py types the value as str; bytes are sent as is
            return None

    def _without_abandoned(self, taken: list[tuple[bytes, dramatiq.Message[Any]]]
                           ) -> list[tuple[bytes, dramatiq.Message[Any]]]:
        """Drop requests that waited over :data:`ABANDONED_CHECK_S` and whose caller's
        process is gone (its alive key expired): nobody would read their answer.
        Background requests are never dropped so: their answer is kept for any reader.
        Fresh requests skip the check, so it costs nothing unless there is a backlog.
        Ages are in Redis's clock (the caller's machine may disagree with ours); a
        request whose age is unknown is kept."""
        now = clock.now()
        if now is None:
            return taken
        old = [(raw, m) for raw, m in taken if m.options.get("reply_to") and m.message_timestamp
               and not background.ttl_of(m.options)  # runs whether its caller lives or not
               and now * 1000 - m.message_timestamp > ABANDONED_CHECK_S * 1000]
        if not old:
            return taken
        try:
            pipe = self.broker.client.pipeline(transaction=False)
            for _, m in old:
                pipe.exists(Keys.alive(m.options["reply_to"]))
            gone = {raw for (raw, _), alive in zip(old, pipe.execute()) if not alive}
            if gone:
                pipe = self.broker.client.pipeline(transaction=False)
                for raw in gone:
                    pipe.lrem(self.broker.processing_key, 1, raw)  # type: ignore[arg-type]  # redis-py types the value as str; bytes are sent as is
                pipe.execute()
                logger.info("mqserve: dropped %d queued request(s) whose callers are gone", len(gone))
        except redis.RedisError:
            return taken
        return [(raw, m) for raw, m in taken if raw not in gone]

    def wait_idle(self, timeout_s: float, check_every_s: float) -> bool:
        taken = list(self.taken)
        self.taken.clear()
        if taken or self.broker.route is not None:  # a multiplexed replica leaves its routing now
            self._put_back([m.raw for m in taken])
            self.release(len(taken))
        deadline = time.monotonic() + timeout_s
        with self.slots:
            while self.unfinished > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                period = min(remaining, check_every_s or remaining)
                if not self.slots.wait(period) and period < remaining:
                    logger.info("mqserve: waiting for %d ongoing request(s) to finish before shutting down "
                                "(at most %.0f s more)", self.unfinished, remaining - period)
        return True

    def _full(self) -> bool:
        return self.broker.draining.is_set() or self.unfinished >= self.prefetch

    def ack(self, message: MessageProxy) -> None:
        self._finish(message)

    def nack(self, message: MessageProxy) -> None:
        self._finish(message)

    def _finish(self, message: Any) -> None:
        """Answer a request whose actor failed before it handed its outcome over, rather
        than leave its caller waiting: one script writes the error, notifies waiters and
        drops the message from processing.

        Every other request is deferred and keeps its slot: its outcome is written, with
        others, by the replica's outcome writer, so no consumer or worker thread waits on it.
        """
        if message.deferred:
            return
        outcome = codec.encode_error(message._exception or RuntimeError("the request failed inside mqserve"))
        batch = scripts.Batch()
        self.broker._queue_complete(batch, message, outcome)
        try:
            error = batch.execute(self.broker.client)[0]
        except redis.RedisError as e:
            error = e
        if isinstance(error, Exception):
            # Dramatiq retries post-processing on connection errors until Redis is back.
            raise BrokerConnectionError(str(error)) from error
        self.release(1)

    def release(self, n: int) -> None:
        """Free ``n`` slots: their messages are answered (or back in the queue)."""
        with self.slots:
            self.unfinished -= n
            self.slots.notify_all()  # the consumer thread and a draining replica both wait here

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        """Put taken-but-unstarted messages back at the head of the queue."""
        raws = [m.raw for m in messages]
        if raws:
            self._put_back(raws)
            self.release(len(raws))

    def _put_back(self, raws: list[bytes]) -> None:
        route = self.broker.route
        if route is not None:  # routed again; a draining replica leaves its routing with them
            mux.requeue(self.broker.client, self.broker.keys, route.app, route.deployment, route.replica_id, raws,
                        leave=self.broker.draining.is_set())
            return
        pipe = self.broker.client.pipeline()
        for raw in raws:
            pipe.lrem(self.broker.processing_key, 1, raw)  # type: ignore[arg-type]  # redis-py types the value as str; bytes are sent as is
            pipe.rpush(self.broker.queue_key, raw)
        pipe.execute()

    def close(self) -> None:
        try:
            self.requeue(list(self.taken))
            self.taken.clear()
            if self.broker.route is not None and self.broker.draining.is_set():
                self._put_back([])  # again: forget the models its last requests loaded
        finally:
            self.conn.close()
