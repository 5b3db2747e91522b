"""Asynchronous HTTP requests (RFC 7240 ``Prefer: respond-async``) and the monitor
resource of each, ``/-/requests/{id}``.

A request to any route whose client prefers an asynchronous answer is sent to the
ingress as a background request (``actors.runtime.background``): the client gets ``202
Accepted`` at once, with ``Location: /-/requests/{id}`` and ``{"request_id": id}``.

- ``GET /-/requests/{id}``: ``202 {"status": "QUEUED"|"RUNNING"}`` until it ends; then the
  stored response exactly as the app returned it (status, headers, body), as often as
  asked until it expires (``MQSERVE_BACKGROUND_TTL_S``). A request that failed answers
  what it would have answered in the foreground (500, or 503/429 for backpressure and
  an unavailable deployment); a cancelled one ``409 {"status": "CANCELLED"}``; an unknown
  or expired id ``404``.
- ``DELETE /-/requests/{id}``: cancels it. ``200 {"status": "CANCELLED"}`` if it was still
  queued (it never runs); ``202 {"status": "RUNNING", "cancel": "requested"}`` if it had
  started (an async ingress gets ``CancelledError``); ``409`` with its status if it
  had ended; ``404`` if unknown.

The gateway decodes only outcomes replicas wrote, never what a client sent.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from actors.exceptions import cancelled_error
from actors.runtime import bridge
from broker import background, codec, scripts

from . import failures

#: The RFC 7240 preference asking for an asynchronous answer.
RESPOND_ASYNC = "respond-async"
#: Where the status of a request is read; ``{id}`` is its request id.
MONITOR_PATH = "/-/requests/{id}"


def prefers_async(scope: dict[str, Any]) -> bool:
    """Whether the client sent ``Prefer: respond-async`` (among other preferences, in
    any case, in any of its ``Prefer`` headers)."""
    for name, value in scope.get("headers", ()):
        if name == b"prefer":
            for preference in value.decode("latin-1").split(","):
                if preference.split(";", 1)[0].split("=", 1)[0].strip().lower() == RESPOND_ASYNC:
                    return True
    return False


def accepted(req_id: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The ``202 Accepted`` answer to a request sent in the background."""
    body = json.dumps({"request_id": req_id}, separators=(",", ":")).encode()
    return 202, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                 (b"location", MONITOR_PATH.format(id=req_id).encode()),
                 (b"preference-applied", RESPOND_ASYNC.encode())], body


async def get_request(gateway: Any, request: Request) -> Response:
    """``GET /-/requests/{id}``: its status while it runs, then its stored response."""
    req_id = request.path_params["id"]
    record, outcome = await bridge.run_sync(background.result, gateway.registry.redis, gateway.keys, req_id)
    if record is None:
        return _unknown(req_id)
    status = record.get("status", "")
    if status not in background.FINAL or outcome is None:
        if status in background.FINAL:  # its outcome expired a moment before its record
            return _unknown(req_id)
        return JSONResponse({"status": status}, status_code=202)
    if status == background.CANCELLED:
        return JSONResponse({"status": status}, status_code=409)
    ok, value = codec.decode_outcome(outcome)
    if not ok:
        answer = failures.failed(req_id, record.get("app", ""), value)
        return Response(answer.text, status_code=answer.status, headers=dict(_text(answer.headers)),
                        media_type="text/plain")
    if not (isinstance(value, tuple) and value and value[0] == "http"):
        return JSONResponse({"status": status, "error": "not an HTTP request; read it with serve.get_response"},
                            status_code=409)
    _, code, headers, body = value
    return _Stored(code, headers, body)


async def delete_request(gateway: Any, request: Request) -> Response:
    """``DELETE /-/requests/{id}``: cancel it (see the module's docstring)."""
    req_id = request.path_params["id"]
    outcome = codec.encode_error(cancelled_error(req_id))
    batch = scripts.Batch()
    background.cancel(batch, gateway.keys, req_id, outcome, gateway.result_ttl_ms)
    (code,) = await bridge.run_sync(batch.execute, gateway.registry.redis)
    if isinstance(code, Exception):
        raise code
    if code == 1:
        return JSONResponse({"status": background.CANCELLED})
    if code == 0:
        return JSONResponse({"status": background.RUNNING, "cancel": "requested"}, status_code=202)
    record = await bridge.run_sync(background.record, gateway.registry.redis, gateway.keys, req_id)
    if code == 2 and record is not None:
        return JSONResponse({"status": record.get("status")}, status_code=409)
    return _unknown(req_id)


def _unknown(req_id: str) -> Response:
    return JSONResponse({"error": f"No background request '{req_id}': unknown, or expired "
                                  "(MQSERVE_BACKGROUND_TTL_S after it ended)."}, status_code=404)


def _text(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]


class _Stored(Response):
    """A stored response sent exactly as the app returned it: its status, its headers
    (repeated ones too, in order) and its body."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status_code = int(status)
        self.body = body
        self.raw_headers = list(headers)
        self.background = None
