"""Handles and responses (``ray.serve.handle``): how code calls a deployment.

``handle.remote()`` encodes the call, hands it to the process's
:class:`actors.runtime.caller.CallClient` (which pipelines it to the deployment's Redis queue)
and returns a :class:`DeploymentResponse` at once. A response passed as an argument to
another ``.remote()`` call travels as its request id: the downstream replica reads the
value from the result key itself, so the value never passes through the caller.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import time
from collections.abc import Callable
from typing import Any

from broker import clock, codec
from broker.keys import Keys

from .context import _serve_request_context
from .exceptions import ServeException, cancelled_error, deadline_error, rebuild_remote_error
from .generator import DeploymentResponseGenerator
from .multiplex import checked_model_id
from .runtime import bridge
from .runtime.caller import DETACHED, CallClient, get_client
from .runtime.cancellation import children, current_request

__all__ = ["DeploymentHandle", "DeploymentResponse", "DeploymentResponseGenerator"]

# Request ids of responses met while pickling a call's arguments (None outside .remote()).
_collecting: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("_collecting", default=None)
# Values of those responses, while a replica unpickles the arguments.
_resolved: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("_resolved", default=None)


class DeploymentHandle:
    """A picklable reference to a deployment, usable from any process that reaches its Redis.

    Example::

        handle = serve.run(app)
        assert handle.remote(5).result() == 12
        handle.say_hello.remote("Dora")            # calls method say_hello
        handle.options(method_name="say_hello")    # the same, configured
    """

    def __init__(self, deployment_name: str, app_name: str = "default", *, _redis_url: str,
                 _namespace: str, _result_ttl_ms: int, _method_name: str = "__call__",
                 _stream: bool = False, _multiplexed_model_id: str = "", _timeout_s: float | None = None,
                 _background: bool = False) -> None:
        self._deployment_name = deployment_name
        self._app_name = app_name
        self._redis_url = _redis_url
        self._namespace = _namespace
        self._result_ttl_ms = _result_ttl_ms
        self._method_name = _method_name
        self._stream = _stream
        self._model = _multiplexed_model_id
        self._timeout_s = _timeout_s
        self._background = _background
        self._client: CallClient | None = None

    @property
    def deployment_name(self) -> str:
        return self._deployment_name

    @property
    def app_name(self) -> str:
        return self._app_name

    def _kwargs(self) -> dict[str, Any]:
        return {"deployment_name": self._deployment_name, "app_name": self._app_name,
                "_redis_url": self._redis_url, "_namespace": self._namespace,
                "_result_ttl_ms": self._result_ttl_ms, "_method_name": self._method_name,
                "_stream": self._stream, "_multiplexed_model_id": self._model, "_timeout_s": self._timeout_s,
                "_background": self._background}

    def __reduce__(self) -> Any:
        return (_rebuild_handle, (self._kwargs(),))

    def __repr__(self) -> str:
        return (f"DeploymentHandle(deployment='{self._deployment_name}', app='{self._app_name}', "
                f"method='{self._method_name}')")

    def options(self, *, method_name: str | None = None, stream: bool | None = None,
                multiplexed_model_id: str | None = None, timeout_s: float | None = None,
                use_new_handle_api: bool | None = None, background: bool | None = None,
                **_ignored: Any) -> DeploymentHandle:
        """A copy of this handle with another method, streaming mode or multiplexed model
        (the model its requests are for: they go to a replica holding it, see
        ``serve.multiplexed``), or a deadline: ``timeout_s`` (mqserve's), the time its
        calls have to finish. A call past it raises ``DeadlineExceededError`` (a
        ``TimeoutError``): never started if it was still queued, cancelled if it ran as a
        coroutine; the calls it makes inherit what is left of it. ``background=True``: its
        requests run whether or not their caller waits or lives (they inherit no deadline
        from the request making them), and their outcome is kept, readable from any
        process by ``response.request_id`` (``serve.get_response``) for
        ``MQSERVE_BACKGROUND_TTL_S``."""
        kwargs = self._kwargs()
        if timeout_s is not None:
            if not timeout_s > 0:
                raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}.")
            kwargs["_timeout_s"] = float(timeout_s)
        if background is not None:
            kwargs["_background"] = bool(background)
        if method_name is not None:
            kwargs["_method_name"] = method_name
        if stream is not None:
            kwargs["_stream"] = bool(stream)
        if multiplexed_model_id is not None:
            kwargs["_multiplexed_model_id"] = checked_model_id(multiplexed_model_id)
        if kwargs["_background"] and kwargs["_stream"]:
            raise ServeException("A background request cannot stream: its outcome is stored whole. Call the "
                                 "generator method without background=True, or return a list from another method.")
        return _rebuild_handle(kwargs)

    def __getattr__(self, name: str) -> DeploymentHandle:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.options(method_name=name)

    def remote(self, *args: Any, **kwargs: Any) -> DeploymentResponse:
        """Call the deployment; returns at once with a response to await or ``.result()``."""
        client = self._client
        if client is None or client.closed:
            client = self._client = get_client(self._redis_url, Keys(self._namespace),
                                               result_ttl_ms=self._result_ttl_ms)
        req_id = codec.new_request_id()
        refs: list[str] = []
        token = _collecting.set(refs)
        try:
            payload = codec.encode_args(args, kwargs)
        finally:
            _collecting.reset(token)
        parent = _serve_request_context.get()  # a call made while serving a request carries its id
        request_id = None if parent is None else parent.request_id
        # The request carries the nearest of its own deadline and its parent's; its caller
        # waits by its own only: the parent's is enforced from the top of the chain down
        # (the parent's caller cancels it, and it cancels this call), as on Ray. A call
        # made once the parent's deadline has passed (its cancellation's cleanup) does not
        # inherit it: it would be dropped unrun. Nor does a background call, which runs
        # whether anyone waits.
        own_ms = 0 if self._timeout_s is None else clock.deadline_in(self._timeout_s)
        inherited_ms = 0 if parent is None or self._background else parent._deadline_ms
        if inherited_ms and clock.seconds_left(inherited_ms) <= 0:
            inherited_ms = 0
        deadline_ms = min(own_ms, inherited_ms) if own_ms and inherited_ms else own_ms or inherited_ms
        if self._background:
            return self._send_background(client, req_id, payload, tuple(refs), request_id, deadline_ms)
        if self._stream:
            message = codec.encode_request(req_id=req_id, method=self._method_name, payload=payload,
                                           refs=tuple(refs), stream=True, model=self._model,
                                           request_id=request_id, deadline_ms=deadline_ms)
            future = client.submit(self._app_name, self._deployment_name, req_id, message, tuple(refs),
                                   expect_reply=False, model=self._model)
            generator = DeploymentResponseGenerator(client, self._deployment_name, req_id, future)
            if current_request.get() is not None:  # cancelled with the request making this call
                children.adopt(generator._state.cancel)
            return generator  # type: ignore[return-value]  # stream=True; remote() is typed for the common case
        message = codec.encode_request(req_id=req_id, method=self._method_name, payload=payload,
                                       refs=tuple(refs), reply_to=client.reply_inbox(), model=self._model,
                                       request_id=request_id, deadline_ms=deadline_ms)
        future = client.submit(self._app_name, self._deployment_name, req_id, message, tuple(refs),
                               model=self._model)
        response = DeploymentResponse(client, self._app_name, self._deployment_name, req_id, message, future,
                                      tuple(refs), own_ms)
        if current_request.get() is not None:  # cancelled with the request making this call
            children.adopt(response._cancel_call)
        return response


    def _send_background(self, client: CallClient, req_id: str, payload: bytes, refs: tuple[str, ...],
                         request_id: str | None, deadline_ms: int) -> DeploymentResponse:
        """A background call (``actors.runtime.background``): no reply inbox, and not
        cancelled with the request making it."""
        from .runtime import background  # it builds on DeploymentResponse, defined below

        ttl_ms = background.ttl_ms()
        message = codec.encode_request(req_id=req_id, method=self._method_name, payload=payload, refs=refs,
                                       model=self._model, request_id=request_id, background_ttl_ms=ttl_ms,
                                       deadline_ms=deadline_ms)
        queued = background.submit(client, self._app_name, self._deployment_name, req_id, message, refs,
                                   method=self._method_name, ttl_ms=ttl_ms, model=self._model)
        return background.BackgroundResponse(client, self._app_name, self._deployment_name, req_id, queued)


def _rebuild_handle(kwargs: dict[str, Any]) -> DeploymentHandle:
    kwargs = dict(kwargs)
    return DeploymentHandle(kwargs.pop("deployment_name"), kwargs.pop("app_name"), **kwargs)


_PENDING = object()


class DeploymentResponse:
    """The future result of one ``handle.remote()`` call.

    ``await response`` in async code, ``response.result(timeout_s=)`` in sync code; pass
    it to another ``.remote()`` call to chain without waiting.
    """

    def __init__(self, client: CallClient, app: str, dep: str, req_id: str, message: bytes,
                 future: concurrent.futures.Future[bytes], refs: tuple[str, ...] = (), deadline_ms: int = 0) -> None:
        self._client = client
        self._app = app
        self._dep = dep
        self._req_id = req_id
        self._message = message
        self._future = future
        self._refs = refs  # ids of the responses this call consumes
        self._raw: bytes | None = None  # the outcome's bytes, once read
        self._passed_on = False  # passed to another call by reference (see __reduce__)
        self._value: Any = _PENDING
        self._error: BaseException | None = None
        # The request's deadline on this process's monotonic clock (None: it has none).
        self._deadline = None if not deadline_ms else time.monotonic() + clock.seconds_left(deadline_ms)

    @property
    def request_id(self) -> str:
        return self._req_id

    def _outcome(self, outcome: bytes) -> Any:
        if self._value is _PENDING and self._error is None:
            self._raw = outcome
            ok, value = codec.decode_outcome(outcome)
            if ok:
                self._value = value
            else:
                self._error = rebuild_remote_error(value.exception, value.exc_type, value.type_name,
                                                   value.message, value.traceback)
        if self._error is not None:
            raise self._error
        return self._value

    def result(self, *, timeout_s: float | None = None, _skip_asyncio_check: bool = False) -> Any:
        """Block until the result is ready and return it (or raise the remote exception).

        Raises ``TimeoutError`` after ``timeout_s`` seconds: a request no replica has taken
        yet is then withdrawn and never runs (a later ``result()`` raises
        ``RequestCancelledError``); one already running goes on. Raises
        ``RequestCancelledError`` if the call was cancelled. Inside an event loop use
        ``await response`` instead: blocking there stalls every other request.
        """
        if not _skip_asyncio_check and bridge.running_loop() is not None:
            raise RuntimeError(
                "Sync methods should not be called from within an `asyncio` event loop. "
                "Use `await response` instead of `response.result()`.")
        if self._raw is not None or self._error is not None:
            return self._outcome(self._raw or b"")
        mine = None if timeout_s is None else time.monotonic() + timeout_s
        deadline = mine if self._deadline is None else min(mine or self._deadline, self._deadline)
        try:
            outcome = self._future.result(timeout=_left(deadline))
            if outcome == DETACHED:
                outcome = self._client.watch(self._req_id, own=True).result(timeout=_left(deadline))
        except concurrent.futures.CancelledError:
            raise cancelled_error(self._req_id) from None
        except concurrent.futures.TimeoutError:
            if deadline != mine:
                raise self._expired() from None
            # A caller that gives up does not want the request started later; one already
            # running goes on (as in Ray), and a later result() may still get its value.
            if not self._future.done():
                self._client.withdraw(self._app, self._dep, self._req_id, self._message, self._refs)
            raise TimeoutError(
                f"Request {self._req_id} to deployment '{self._dep}' did not finish within "
                f"{timeout_s} s.") from None
        return self._outcome(outcome)

    def __await__(self) -> Any:
        return self._await().__await__()

    async def _await(self) -> Any:
        if self._raw is not None or self._error is not None:
            return self._outcome(self._raw or b"")
        if self._future.cancelled():
            raise cancelled_error(self._req_id)
        try:
            if self._deadline is None:
                outcome = await bridge.wait(self._future)
                if outcome == DETACHED:
                    outcome = await bridge.wait(self._client.watch(self._req_id, own=True))
            else:
                outcome = await self._await_by_deadline()
        except asyncio.CancelledError:
            if self._future.cancelled():
                raise cancelled_error(self._req_id) from None
            self.cancel()  # the awaiting task was cancelled: cancel the call too
            raise
        return self._outcome(outcome)

    async def _await_by_deadline(self) -> bytes:
        assert self._deadline is not None
        try:
            outcome = await asyncio.wait_for(bridge.follow(self._future), _left(self._deadline))
            if outcome == DETACHED:
                outcome = await asyncio.wait_for(bridge.follow(self._client.watch(self._req_id, own=True)),
                                                 _left(self._deadline))
        except asyncio.TimeoutError:
            raise self._expired() from None
        return outcome

    def _expired(self) -> BaseException:
        """The deadline passed while the caller waited: the call is cancelled (withdrawn if
        still queued), and every read of this response raises the deadline's error."""
        self._error = deadline_error(self._req_id, "while its caller waited")
        self._cancel_call()
        return self._error

    def cancel(self) -> None:
        """Cancel the call: a request no replica has taken yet is withdrawn and never runs."""
        self._cancel_call()

    @property
    def _cancel_call(self) -> Callable[[], None]:
        """What cancels this call, holding no reference to the response (whose life
        decides when a result passed on by reference is released)."""
        client, future, args = self._client, self._future, (self._app, self._dep, self._req_id, self._message,
                                                             self._refs)

        def cancel() -> None:
            if future.cancel():
                client.cancel(*args)

        return cancel

    def __reduce__(self) -> Any:
        """Pass the value to the call being pickled: inline if it is here already (an
        error or a cancellation too), else by reference to the result key."""
        refs = _collecting.get()
        if refs is None:
            raise ServeException(
                "A DeploymentResponse can only be passed as an argument to another handle "
                ".remote() call; to store or send the value, await it first.")
        outcome = self._raw if self._raw is not None else self._client.pass_on(self._req_id, self._future)
        if outcome is not None:
            return (_embedded_outcome, (outcome,))
        self._passed_on = True
        refs.append(self._req_id)
        return (_chained_value, (self._req_id,))

    def __del__(self) -> None:
        if self._passed_on:
            self._client.release(self._req_id)

    def __repr__(self) -> str:
        return f"DeploymentResponse(deployment='{self._dep}', request_id='{self._req_id}')"


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (monotonic clock), never negative; None for no deadline."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _embedded_outcome(outcome: bytes) -> Any:
    ok, value = codec.decode_outcome(outcome)
    if ok:
        return value
    raise rebuild_remote_error(value.exception, value.exc_type, value.type_name, value.message, value.traceback)


def _chained_value(req_id: str) -> Any:
    values = _resolved.get()
    if values is None or req_id not in values:
        raise ServeException(f"the result of request {req_id} was not resolved before use")
    return values[req_id]


def load_call_args(client: CallClient, payload: bytes, refs: tuple[str, ...],
                   timeout_s: float | None = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Unpickle a call's arguments on a replica, waiting for the chained results first.

    An upstream call that failed makes this raise its exception, so the downstream
    call fails with it, as in Ray.
    """
    values: dict[str, Any] = {}
    futures = [(req_id, client.watch(req_id)) for req_id in refs]  # one promised read each
    for req_id, fut in futures:
        values[req_id] = _embedded_outcome(fut.result(timeout=timeout_s))
    token = _resolved.set(values)
    try:
        args, kwargs = codec.decode_args(payload)
    finally:
        _resolved.reset(token)
    return args, kwargs
