"""What an HTTP client gets when its request fails, as Ray Serve's proxy answers it.

Clients and tests of ported apps match on these statuses and bodies: a refused request
(backpressure) is the deployment's ``backpressure_config`` status (503 unless set to
429) with Ray's message and an optional ``Retry-After``; a deployment that cannot take
requests is 503; anything else the application raised is a short 500, its traceback
only in the gateway's log.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from actors.exceptions import BackPressureError, DeadlineExceededError, DeploymentUnavailableError
from broker.codec import RemoteFailure
from broker.errors import MQServeError

logger = logging.getLogger("mqserve.gateway")

Headers = list[tuple[bytes, bytes]]

#: The status counted (as nginx and Ray's proxy do) for a request whose client left.
CLIENT_CLOSED_REQUEST = 499


class ResponseAborted(MQServeError):
    """A response whose head went out cannot be completed (the generator raised, or the
    request timed out): raised out of the ASGI app, so that uvicorn cuts the connection
    and the client cannot take what it got for a whole response, as with Ray Serve."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status


@dataclass(frozen=True)
class Answer:
    """A response in one piece: status, extra headers, text body."""

    status: int
    text: str
    headers: Headers = field(default_factory=list)


async def send_answer(send: Callable[[MutableMapping[str, Any]], Awaitable[None]], answer: Answer,
                      kind: str = "http.response") -> int:
    """Send ``answer`` as an ASGI response (``kind``: ``websocket.http.response`` to refuse
    a WebSocket handshake with it); its status."""
    body = answer.text.encode()
    await send({"type": f"{kind}.start", "status": answer.status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *answer.headers]})
    await send({"type": f"{kind}.body", "body": body})
    return answer.status


def refused(error: Exception) -> Answer:
    """The answer to a request the gateway could not send (its ``submit`` failed)."""
    if isinstance(error, BackPressureError):
        return backpressure(error)
    return Answer(503, str(error))  # DeploymentUnavailableError, ConnectionError (Redis unreachable)


def backpressure(error: BackPressureError) -> Answer:
    """Ray's answer to backpressure: the configured status, its message, ``Retry-After``."""
    headers: Headers = []
    if error.retry_after_s is not None:
        # RFC 9110 delay-seconds: a whole number, rounded up so no client retries too early.
        headers.append((b"retry-after", str(max(0, math.ceil(error.retry_after_s))).encode()))
    return Answer(error.status_code, error.message, headers)


def failed(request_id: str, app: str, failure: RemoteFailure) -> Answer:
    """The answer to a request (by its user-visible id) whose application raised ``failure``.

    A ``BackPressureError`` or ``DeploymentUnavailableError`` raised by a call the
    ingress made downstream answers as if the gateway had met it itself.
    """
    error = failure.exception
    if isinstance(error, BackPressureError):
        logger.warning("request %s to application '%s' was refused downstream: %s", request_id, app, error.message)
        return backpressure(error)
    if isinstance(error, DeadlineExceededError):  # the request timeout passed downstream
        logger.warning("request %s to application '%s' passed its deadline: %s", request_id, app, failure.message)
        return Answer(408, f"Request {request_id} timed out: its deadline passed.")
    if isinstance(error, DeploymentUnavailableError):
        message = str(error.args[0]) if error.args else failure.message  # without the remote traceback
        logger.warning("request %s to application '%s' failed: %s", request_id, app, message)
        return Answer(503, message)
    logger.error("request %s to application '%s' failed:\n%s", request_id, app, failure.traceback)
    return Answer(500, "Internal Server Error")


def timed_out(request_id: str, timeout_s: float) -> Answer:
    """Ray's 408 for a request past ``request_timeout_s`` (its user-visible id, as Ray's)."""
    return Answer(408, f"Request {request_id} timed out after {timeout_s}s.")
