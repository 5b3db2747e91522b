"""Where a request runs on a replica: one path from a taken message to its outcome.

:meth:`Requests.run` is given each message the replica's consumer took (on a Dramatiq
worker thread, the replica's thread pool) and returns the future of the request's
outcome bytes, which the consumer's ack writes (``complete.lua``). It never raises:
whatever the user code returns or raises becomes the outcome.

- A unary call resolves its chained arguments, then runs the method: a sync one here
  on the worker thread, an async one on the replica's event loop (the thread is free
  again at once).
- A streamed call drives its generator into the request's stream (``streaming``).
- An HTTP request runs through the ingress on the loop (``http``), and so does a
  WebSocket connection, for its whole life (``websocket``).

Requests cancelled before they start never run (``cancellation``).

What a request needs from Redis comes through a :class:`Transport`: the sink of its
response stream and the client that reads chained arguments. A replica passes a
:class:`RedisTransport`; unit tests pass an in-memory one (as Dramatiq's tests run on
its ``StubBroker``), so every kind of request runs there without Redis.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import dramatiq

from broker import clock, codec, counts, sockets
from broker.keys import Keys
from broker.queue import STREAMED
from broker.streams import StreamSink

from ..context import _RequestContext, _serve_request_context
from ..exceptions import DeadlineExceededError, RayServeException, RequestCancelledError, deadline_error
from ..handle import load_call_args
from . import bridge, http, websocket
from .access import AccessLog
from .caller import CallClient, get_client
from .cancellation import Cancellations, children, current_request
from .multiplex import current_model
from .stats import RequestStats
from .streaming import Sink, StreamWriter, drive

logger = logging.getLogger("mqserve.replica")

Outcome = concurrent.futures.Future[bytes]

#: Seconds after its deadline a coroutine still running is cancelled by its own replica.
#: A caller that waits cancels it at the deadline itself, from the top of the chain down,
#: so that every level sees ``CancelledError`` as on Ray; this timer is the backstop for
#: requests nobody cancels (their caller does not wait, or is gone), and it must not
#: overtake the caller's cancellation on its way down the chain.
EXPIRY_GRACE_S = 1.0


class Transport(Protocol):
    """What running requests needs from Redis."""

    def stream(self, req_id: str, inbox: str) -> Sink:
        """The sink of request ``req_id``'s response stream (``inbox``: its caller's)."""
        ...

    def calls(self) -> CallClient:
        """The client that reads the results a request's arguments are chained to."""
        ...

    def socket(self, conn_id: str) -> sockets.Streams:
        """The two streams of WebSocket connection ``conn_id``."""
        ...

    async def count(self, app: str, dep: str, event: str) -> None:
        """Count one ``event`` of the deployment (``broker.counts``), from the replica's loop."""
        ...


class RedisTransport:
    """A replica's transport: its loop's asyncio connection and the process's caller client."""

    def __init__(self, *, url: str, keys: Keys, result_ttl_ms: int, aio: Any) -> None:
        self.url, self.keys, self.result_ttl_ms = url, keys, result_ttl_ms
        self.aio = aio  # a redis.asyncio client, used on the replica's loop only

    def stream(self, req_id: str, inbox: str) -> StreamSink:
        return StreamSink(self.aio, self.keys, req_id, inbox=inbox, ttl_ms=self.result_ttl_ms)

    async def count(self, app: str, dep: str, event: str) -> None:
        await counts.add(self.aio, self.keys, app, dep, event)

    def socket(self, conn_id: str) -> sockets.Streams:
        return sockets.Streams(self.aio, self.keys, conn_id, ttl_ms=self.result_ttl_ms)

    def calls(self) -> CallClient:
        # Looked up per request, not kept: the process's client is created on first use
        # (it connects to Redis) and again if it was closed.
        return get_client(self.url, self.keys, result_ttl_ms=self.result_ttl_ms)


class Requests:
    """Runs the requests of one replica: its user object, its loop, its cancellations."""

    def __init__(self, *, target: Any, is_function: bool, deployment: str, transport: Transport,
                 loop: asyncio.AbstractEventLoop, cancels: Cancellations, app: str = "",
                 access: AccessLog | None = None, stats: RequestStats | None = None) -> None:
        self.target, self.is_function, self.deployment = target, is_function, deployment
        self.transport, self.loop, self.cancels = transport, loop, cancels
        self.app, self.access, self.stats = app, access, stats
        self._ingress: http.ASGIApp | None = None

    def run(self, message: dramatiq.Message[Any]) -> Outcome:
        """The future outcome of one taken request (already resolved for sync work).

        The calls its user code makes are its children (cancelled with it), and carry
        its user-visible request id (the request context); the tasks it starts on the
        loop inherit both from this thread's context."""
        req_id = message.message_id
        options = message.options
        model_id = options.get("multiplexed_model_id", "")
        request = _RequestContext("", codec.request_id_of(req_id, options), req_id, self.app, model_id,
                                  bool(options.get("http")), options.get(codec.DEADLINE_OPTION, 0))
        started = time.perf_counter()
        token, context_token = current_request.set(req_id), _serve_request_context.set(request)
        model = current_model.set(model_id)  # serve.get_multiplexed_model_id()
        try:
            outcome = self._run(message)
        finally:
            current_model.reset(model)
            _serve_request_context.reset(context_token)
            current_request.reset(token)
        outcome.add_done_callback(lambda _: children.forget(req_id))
        if self.stats is not None:  # the dashboard's figures: in memory, written once a second
            self.stats.watch(outcome, started, request.request_id)
        if self.access is not None and not request.is_http_request:  # HTTP ones log in their app
            self.access.watch_call(message.args[0], request, started, outcome)
        return outcome

    def _run(self, message: dramatiq.Message[Any]) -> Outcome:
        method, payload, refs = message.args
        try:
            if message.options.get("socket"):
                return self._socket(message, payload)
            if message.options.get("http"):
                return self._http(message, payload)
            if message.options.get("stream"):
                return self._stream(message, method, payload, tuple(refs))
            return self._unary(message.message_id, method, payload, tuple(refs))
        except RequestCancelledError as e:
            return _resolved(codec.encode_error(e))
        except DeadlineExceededError as e:
            self._count_expired()
            return _resolved(codec.encode_error(e))
        except Exception as e:
            logger.error("deployment '%s' raised", self.deployment, exc_info=e)
            return _resolved(codec.encode_error(e))

    def _unary(self, req_id: str, method: str, payload: bytes, refs: tuple[str, ...]) -> Outcome:
        self._refuse_if_expired(req_id)
        self._refuse_if_cancelled(req_id)
        args, kwargs = load_call_args(self.transport.calls(), payload, refs)
        self._refuse_if_cancelled(req_id)  # while it waited for its arguments
        result = self._method(method)(*args, **kwargs)
        if inspect.isawaitable(result):
            return self._on_loop(req_id, _awaited(result), lambda value: self.encode(_not_a_stream(method, value)))
        return _resolved(self.encode(_not_a_stream(method, result)))

    def _stream(self, message: dramatiq.Message[Any], method: str, payload: bytes, refs: tuple[str, ...]) -> Outcome:
        """A generator call: its items, or its error, go to the request's stream."""
        writer = self._writer(message)
        try:
            self._refuse_if_expired(message.message_id)
            args, kwargs = load_call_args(self.transport.calls(), payload, refs)
            return drive(self._method(method)(*args, **kwargs), writer, self.loop, method)
        except Exception as e:
            if isinstance(e, DeadlineExceededError):
                self._count_expired()
            else:
                logger.error("method '%s' of deployment '%s' failed", method, self.deployment, exc_info=e)
            writer.finish(codec.encode_error(e))
            writer.done.result()
            return _resolved(STREAMED)

    def _http(self, message: dramatiq.Message[Any], payload: bytes) -> Outcome:
        """An HTTP request from the gateway, run through the ingress on the event loop; a
        streamed response opens the request's stream when its first piece comes."""
        self._refuse_if_expired(message.message_id)
        snapshot = _http_snapshot(payload)
        task: list[concurrent.futures.Future[bytes]] = []

        def open_stream() -> StreamWriter:
            writer = self._writer(message)
            writer.on_cancel = lambda: task[0].cancel()
            return writer

        served = http.serve(self._asgi_app(), snapshot, open_stream,
                            collect=bool(message.options.get(codec.BACKGROUND_OPTION)))
        return self._on_loop(message.message_id, served, lambda raw: raw, started=task.append)

    def _socket(self, message: dramatiq.Message[Any], payload: bytes) -> Outcome:
        """A WebSocket connection from the gateway, served by the ingress on the event
        loop until it closes."""
        streams = self.transport.socket(message.message_id)
        served = websocket.serve(self._asgi_app(), _http_snapshot(payload), streams,
                                 message.options.get("reply_to", ""))
        return self._on_loop(message.message_id, served, lambda raw: raw)

    def _on_loop(self, req_id: str, coro: Coroutine[Any, Any, Any], encode: Callable[[Any], bytes], *,
                 started: Callable[[concurrent.futures.Future[Any]], None] | None = None) -> Outcome:
        """Run ``coro`` on the loop; its outcome: ``encode(result)``, its error, or a
        cancellation (the caller cancelled it, or the request's deadline passed)."""
        outcome: Outcome = concurrent.futures.Future()
        request = _serve_request_context.get()
        deadline_ms = 0 if request is None else request._deadline_ms
        timer: list[asyncio.TimerHandle] = []  # cancels the task at the deadline (on the loop)
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            task.cancel()

        def done(task: concurrent.futures.Future[Any]) -> None:
            for handle in timer:
                handle.cancel()
            if task.cancelled() and expired:
                self._count_expired()
                outcome.set_result(codec.encode_error(deadline_error(req_id, "while it ran")))
                return
            if task.cancelled():
                outcome.set_result(codec.encode_error(RequestCancelledError("the caller cancelled the request")))
                return
            try:
                outcome.set_result(encode(task.result()))
            except BaseException as e:
                logger.error("deployment '%s' raised", self.deployment, exc_info=e)
                outcome.set_result(codec.encode_error(e))

        task = bridge.submit(self.loop, coro)
        if started is not None:
            started(task)
        self.cancels.start(req_id, task)
        if deadline_ms:
            self.loop.call_soon_threadsafe(
                lambda: timer.append(self.loop.call_later(max(0.0, clock.seconds_left(deadline_ms)) + EXPIRY_GRACE_S,
                                                          expire)))
        task.add_done_callback(done)
        return outcome

    def encode(self, result: Any) -> bytes:
        """The outcome of a return value; an error if it cannot travel."""
        try:
            return codec.encode_value(result)
        except Exception as e:
            return codec.encode_error(TypeError(
                f"Deployment '{self.deployment}' returned a value that cannot be pickled "
                f"({type(result).__name__}): {e}"))

    def _refuse_if_expired(self, req_id: str) -> None:
        """Never start a request whose deadline passed while it waited: its caller gave up."""
        request = _serve_request_context.get()
        if request is not None and request._deadline_ms and clock.seconds_left(request._deadline_ms) <= 0:
            raise deadline_error(req_id, "before it started")

    def _count_expired(self) -> None:
        bridge.submit(self.loop, self.transport.count(self.app, self.deployment, counts.EXPIRED))

    def _refuse_if_cancelled(self, req_id: str) -> None:
        if self.cancels.cancelled(req_id):
            raise RequestCancelledError(f"Request {req_id} was cancelled before it started.")

    def _method(self, name: str) -> Callable[..., Any]:
        if self.is_function:
            if name != "__call__":
                raise RayServeException(f"Function deployment '{self.deployment}' has no method '{name}'; "
                                     "call the handle itself.")
            return self.target
        method = getattr(self.target, name, None)
        if method is None or not callable(method):
            available = [a for a in dir(self.target) if not a.startswith("__") and callable(getattr(self.target, a))]
            raise RayServeException(f"Tried to call a method '{name}' that does not exist. "
                                    f"Available methods: {available}.")
        return method

    def _writer(self, message: dramatiq.Message[Any]) -> StreamWriter:
        return StreamWriter(self.transport.stream(message.message_id, message.options.get("reply_to", "")),
                            self.loop)

    def _asgi_app(self) -> http.ASGIApp:
        if self._ingress is None:
            ingress = getattr(type(self.target), "_mq_ingress_app", None)
            if ingress is not None and not self.is_function:
                self._ingress = http.bind_ingress(ingress, type(self.target), self.target)
            else:
                self._ingress = http.call_as_asgi(self._method("__call__"))
            if self.access is not None:
                self._ingress = self.access.asgi(self._ingress)
        return self._ingress


def _http_snapshot(payload: bytes) -> dict[str, Any]:
    """The gateway's snapshot of an HTTP request (or WebSocket connection); its route in
    the request context is the application's route prefix, as in Ray."""
    (snapshot,), _ = codec.decode_args(payload)
    request = _serve_request_context.get()
    if request is not None:
        _serve_request_context.set(_RequestContext(snapshot.get("root_path") or "/", request.request_id,
                                                   request._internal_request_id, request.app_name, "", True,
                                                   request._deadline_ms))
    return dict(snapshot)


def _not_a_stream(method: str, result: Any) -> Any:
    """A unary call's result; Ray's error if the method returned a generator."""
    if inspect.isgenerator(result) or inspect.isasyncgen(result):
        if inspect.isgenerator(result):
            result.close()
        raise TypeError(f"Method '{method}' returned a generator. You must use `handle.options(stream=True)` "
                        "to call generators on a deployment.")
    return result


def _resolved(outcome: bytes) -> Outcome:
    future: Outcome = concurrent.futures.Future()
    future.set_result(outcome)
    return future


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
