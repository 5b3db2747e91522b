"""Exceptions a Ray Serve user catches, under the same names (``ray.serve.exceptions``).

Every exception passes all its arguments to ``super().__init__`` so it survives
pickling between processes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from broker.errors import MQServeError

__all__ = [
    "MQServeError",
    "RayServeException",
    "ServeException",
    "BackPressureError",
    "DeploymentUnavailableError",
    "RequestCancelledError",
    "DeployFailedError",
    "UnpicklableDeploymentError",
    "ReplicaDiedError",
    "RequestLostError",
    "RequestNotFoundError",
    "DeadlineExceededError",
]


class ServeException(MQServeError):
    """Root of the errors of mqserve's Ray-compatible API (under :class:`MQServeError`,
    the root of all mqserve's own errors)."""


#: Ray Serve's name for the root, so ported ``except`` clauses keep working.
RayServeException = ServeException


class BackPressureError(ServeException):
    """The deployment already has ``max_queued_requests`` requests waiting.

    Built as Ray Serve builds it, and its message starts as Ray's does ("Request dropped
    due to backpressure"), which is what clients and tests match on. Over HTTP it is
    answered with ``status_code`` (503, or 429 with the deployment's
    ``backpressure_config``) and, if ``retry_after_s`` is set, a ``Retry-After`` header.
    ``detail`` (mqserve's own) says which deployment refused, and what to do.
    """

    def __init__(self, num_queued_requests: int, max_queued_requests: int, status_code: int = 503,
                 retry_after_s: float | None = None, detail: str = "") -> None:
        # Every argument goes to the base class, so that the error survives pickling.
        super().__init__(num_queued_requests, max_queued_requests, status_code, retry_after_s, detail)
        self.num_queued_requests = num_queued_requests
        self.max_queued_requests = max_queued_requests
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.detail = detail

    @property
    def message(self) -> str:
        """The message alone (``str()`` of an error from another process adds its traceback)."""
        text = (f"Request dropped due to backpressure (num_queued_requests={self.num_queued_requests}, "
                f"max_queued_requests={self.max_queued_requests}).")
        return f"{text} {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return self.message


class DeploymentUnavailableError(ServeException):
    """The deployment is not running: deleted, never deployed, or failed to deploy."""


class RequestCancelledError(ServeException, asyncio.CancelledError):
    """The request was cancelled with ``DeploymentResponse.cancel()``.

    It is also an ``asyncio.CancelledError``, as in Ray, so async code that handles
    cancellation sees it as one.
    """


def cancelled_error(req_id: str) -> RequestCancelledError:
    """What a cancelled request raises, for its caller and the calls it was passed to."""
    return RequestCancelledError(f"Request {req_id} was cancelled.")


def refused_error(code: int, app: str, dep: str, req_id: str, *, queued: int = 0, max_queued: int = 0,
                  status_code: int = 503, retry_after_s: float | None = None) -> ServeException:
    """What a request ``enqueue.lua`` refused with ``code`` (negative) raises; the
    keywords describe a refusal for backpressure (-2)."""
    if code == -2:
        return BackPressureError(
            queued, max_queued, status_code, retry_after_s,
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


def deleted_error(app: str) -> DeploymentUnavailableError:
    """What requests still queued for a deleted application fail with."""
    return DeploymentUnavailableError(f"Application '{app}' was deleted before this request ran.")


class DeadlineExceededError(ServeException, TimeoutError):
    """The request's deadline passed before it finished: it was never started (a replica
    drops a request whose deadline passed while it waited), or, running as a coroutine,
    it was cancelled. The deadline comes from ``handle.options(timeout_s=)``, from the
    request that made the call (its remaining budget), or from the gateway's request
    timeout. A ``TimeoutError``, so code that catches timeouts catches it; over HTTP, 408.
    """


def deadline_error(req_id: str, where: str) -> DeadlineExceededError:
    """What a request whose deadline passed ``where`` ("before it started", "while it
    ran", "while its caller waited") raises."""
    return DeadlineExceededError(f"Request {req_id} passed its deadline {where}.")


class ReplicaDiedError(ServeException):
    """The replica running the request died before answering (killed, crashed)."""


class RequestLostError(ServeException, ConnectionError):
    """Redis restarted without persistence while the request was pending: it may or may
    not have run, and its answer will not come. Call again if that is safe."""


class RequestNotFoundError(ServeException, KeyError):
    """No background request has this id: it was never sent, or its outcome expired
    (``MQSERVE_BACKGROUND_TTL_S`` after it ended). A ``KeyError``, as a lookup by key."""

    def __init__(self, message: str, request_id: str = "") -> None:
        super().__init__(message, request_id)
        self.request_id = request_id

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])

    @classmethod
    def expired(cls, request_id: str) -> RequestNotFoundError:
        return cls(f"No background request with id '{request_id}': it was never sent from "
                   "handle.options(background=True) or 'Prefer: respond-async', or it expired "
                   "(MQSERVE_BACKGROUND_TTL_S after it ended; raise it to keep outcomes longer).", request_id)


class DeployFailedError(ServeException):
    """A deployment could not start (its constructor raised, or its replicas died)."""


class UnpicklableDeploymentError(ServeException, TypeError):
    """A deployment's class, or an argument bound to it, cannot be pickled (a lock, a
    socket, an open file...), so it cannot reach a replica. Raised by ``serve.run``
    before anything is deployed. A ``TypeError``, as the pickling error Ray raises."""


class RemoteError(ServeException):
    """Stand-in for a remote exception whose class could not be loaded here."""


class _RemoteTraceback:
    """Mixin for the per-class subclasses built by :func:`rebuild_remote_error`."""

    _mq_remote_traceback: str = ""
    args: tuple[Any, ...]  # declared only: the exception class mixed in with this one has it

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}\n\nRemote traceback (most recent call last):\n{self._mq_remote_traceback}"

    def __reduce__(self) -> Any:
        base = type(self).__mro__[2]
        return (_restore, (base, self.args, dict(self.__dict__), self._mq_remote_traceback))


_subclasses: dict[type, type] = {}


def _remote_subclass(cls: type) -> type:
    sub = _subclasses.get(cls)
    if sub is None:
        sub = type(cls.__name__, (_RemoteTraceback, cls), {"__module__": cls.__module__})
        sub.__qualname__ = cls.__qualname__
        _subclasses[cls] = sub
    return sub


def _restore(cls: type, args: tuple[Any, ...], state: dict[str, Any], tb: str) -> BaseException:
    try:
        exc = _instance(cls, _remote_subclass(cls), args)
        exc._mq_remote_traceback = tb  # type: ignore[attr-defined]  # exc is a _RemoteTraceback subclass, made at run time
    except TypeError:
        # Classes that refuse subclassing keep their own type; the traceback then
        # travels as a note.
        exc = _instance(cls, cls, args)
        if hasattr(exc, "add_note"):  # Python 3.11+
            exc.add_note(f"Remote traceback (most recent call last):\n{tb}")
    exc.args = args
    exc.__dict__.update(state)
    return exc


def _instance(cls: type, target: type, args: tuple[Any, ...]) -> BaseException:
    """An instance of ``target`` built as unpickling builds exceptions (``cls(*args)``), or,
    if the class's constructor refuses its own args, without running ``__init__``."""
    try:
        return target(*args)
    except Exception:
        pass
    try:
        return cls.__new__(target)  # type: ignore[call-overload]  # cls is an exception class, typed only as a type
    except TypeError:
        return BaseException.__new__(target)


def rebuild_remote_error(
    exception: BaseException | None, exc_type: type | None, type_name: str, message: str, tb: str
) -> BaseException:
    """An exception that ``isinstance`` the remote one and carries its traceback text.

    Prefer the original object (custom attributes kept); else its class with the
    message; else :class:`RemoteError` naming the class.
    """
    if isinstance(exception, _RemoteTraceback):
        return exception
    if exception is not None:
        return _restore(type(exception), exception.args, dict(getattr(exception, "__dict__", {})), tb)
    if isinstance(exc_type, type) and issubclass(exc_type, BaseException):
        return _restore(exc_type, (message,), {}, tb)
    return _restore(RemoteError, (f"{type_name}: {message}",), {}, tb)
