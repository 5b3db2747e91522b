"""Background requests on the caller's side: sending them, and reading them by id from
any process (``serve.get_response``).

``handle.options(background=True).remote()`` sends an ordinary request message marked
background (``options["background"]`` = the TTL of what it leaves), without a reply
inbox: nobody needs to be alive for it to run, and no replica drops it as abandoned.
Its outcome stays under its result key and its status in ``{ns}:req:{id}``
(``broker.background``) for ``MQSERVE_BACKGROUND_TTL_S`` after it ended, whoever reads
it and however often, so a :class:`BackgroundResponse` reads it with ``bg_read.lua``
(the value now, or pushed to this process's inbox when written) rather than waiting for
a reply. Cancelling goes by id alone (``bg_cancel.lua``), from any process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from concurrent.futures import Future
from typing import Any

import redis

from broker import background, codec, scripts
from broker.keys import Keys

from ..config import background_ttl_s
from ..exceptions import RequestCancelledError, RequestNotFoundError, cancelled_error
from ..handle import DeploymentResponse, _chained_value, _collecting
from . import bridge
from .caller import CallClient

logger = logging.getLogger("mqserve")

#: Seconds a reader waits before it registers again (its registration may have been
#: consumed by a reader of another response of this process: harmless, and cheap).
READ_AGAIN_S = 60.0


def submit(client: CallClient, app: str, dep: str, req_id: str, message: bytes, refs: tuple[str, ...], *,
           method: str, ttl_ms: int, model: str = "", http: bool = False) -> Future[bytes]:
    """Queue a background request with its status record (one round trip, as any call);
    the future resolves once it is queued, or fails with its refusal, which is then
    recorded too (FAILED, or CANCELLED if a cancel overtook it) for readers elsewhere."""
    def via(batch: scripts.Batch) -> None:
        background.enqueue(batch, client.keys, app, dep, req_id, message, refs, client.result_ttl_ms, model,
                           method=method, ttl_ms=ttl_ms, http=http)

    queued = client.submit(app, dep, req_id, message, refs, expect_reply=False, model=model, via=via)

    def refused(fut: Future[bytes]) -> None:
        error = None if fut.cancelled() else fut.exception()
        if error is None or isinstance(error, ConnectionError):
            return  # queued; or Redis unreachable, and perhaps queued after all
        outcome = codec.encode_error(error)
        fields = {"app": app, "deployment": dep, "method": method, "attempts": "0"}

        def add(batch: scripts.Batch) -> None:
            background.complete(batch, client.keys, req_id, outcome, processing_key=client.keys.processing("none"),
                                raw=b"", ttl_ms=ttl_ms, inbox_ttl_ms=client.result_ttl_ms, fields=fields)

        client.send(add, lambda res: None, outlive_loop=True)

    queued.add_done_callback(refused)
    return queued


def ttl_ms() -> int:
    """The background TTL this process gives the requests it sends."""
    return int(background_ttl_s() * 1000)


class BackgroundResponse(DeploymentResponse):
    """A background request, from the handle that sent it or :func:`lookup` by id.

    ``await``, ``.result(timeout_s=)``, ``.cancel()`` as any response, and
    ``.status()``. Unlike an ordinary response, a timeout, or cancelling the task that
    awaits it, leaves the request running (it runs whether anyone waits or not: call
    ``.cancel()`` to stop it); and reading it never deletes its outcome.
    """

    def __init__(self, client: CallClient, app: str, dep: str, req_id: str, queued: Future[bytes]) -> None:
        super().__init__(client, app, dep, req_id, b"", queued)

    def result(self, *, timeout_s: float | None = None, _skip_asyncio_check: bool = False) -> Any:
        """Wait for the outcome and return it (or raise the request's exception).

        Raises ``TimeoutError`` after ``timeout_s``; the request goes on, and a later
        call may still get its value. Raises :class:`RequestNotFoundError` if its outcome
        expired."""
        if not _skip_asyncio_check and bridge.running_loop() is not None:
            raise RuntimeError(
                "Sync methods should not be called from within an `asyncio` event loop. "
                "Use `await response` instead of `response.result()`.")
        if self._raw is not None:
            return self._outcome(self._raw)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            self._future.result(timeout=timeout_s)  # queued (or refused: raises its error)
            while True:
                left = READ_AGAIN_S if deadline is None else min(READ_AGAIN_S, max(0.0, deadline - time.monotonic()))
                try:
                    return self._outcome(self._client.watch(self._req_id, kept=True).result(timeout=left))
                except concurrent.futures.TimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise
        except concurrent.futures.CancelledError:
            raise cancelled_error(self._req_id) from None
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"Background request {self._req_id} to deployment '{self._dep}' did not finish within "
                f"{timeout_s} s; it goes on: read it later (serve.get_response(request_id)).") from None

    async def _await(self) -> Any:
        if self._raw is not None:
            return self._outcome(self._raw)
        await bridge.wait(self._future)
        while True:
            try:
                outcome = await asyncio.wait_for(bridge.wait(self._client.watch(self._req_id, kept=True)),
                                                 READ_AGAIN_S)
            except asyncio.TimeoutError:
                continue
            return self._outcome(outcome)

    def status(self) -> str:
        """``"QUEUED"``, ``"RUNNING"``, ``"SUCCEEDED"``, ``"FAILED"`` or ``"CANCELLED"``,
        from its record in Redis (one round trip). Raises :class:`RequestNotFoundError`
        once it expired."""
        if not self._future.done():
            return background.QUEUED  # being sent from this event loop
        refusal = None if self._future.cancelled() else self._future.exception()
        if refusal is not None:  # never queued (its record is being written)
            return background.CANCELLED if isinstance(refusal, RequestCancelledError) else background.FAILED
        record = background.record(self._client.transport.redis, self._client.keys, self._req_id)
        if record is None:
            raise RequestNotFoundError.expired(self._req_id)
        return record["status"]

    def cancel(self) -> None:
        """Cancel it, from any process: a queued request is withdrawn and never runs; a
        running async one gets ``CancelledError``. Its status then becomes CANCELLED, and
        ``result()`` raises ``RequestCancelledError``."""
        client, req_id = self._client, self._req_id
        outcome = codec.encode_error(cancelled_error(req_id))

        def add(batch: scripts.Batch) -> None:
            background.cancel(batch, client.keys, req_id, outcome, client.result_ttl_ms)

        client.send(add, lambda res: None, outlive_loop=True)

    @property
    def _cancel_call(self) -> Any:
        return self.cancel

    def __reduce__(self) -> Any:
        """Passed to another call: by reference to its kept result (read with
        ``watch.lua``, which deletes nothing that was not promised: nothing is), or
        inline once this process has its outcome."""
        refs = _collecting.get()
        if refs is None or self._raw is not None:
            return super().__reduce__()
        refs.append(self._req_id)
        return (_chained_value, (self._req_id,))

    def __repr__(self) -> str:
        return f"DeploymentResponse(deployment='{self._dep}', request_id='{self._req_id}', background=True)"


def lookup(client: CallClient, request_id: str) -> BackgroundResponse:
    """The response of background request ``request_id``; :class:`RequestNotFoundError`
    if no such request exists (or it expired)."""
    if not isinstance(request_id, str) or len(request_id) != codec.REQUEST_ID_LEN:
        raise RequestNotFoundError.expired(str(request_id))
    record = background.record(client.transport.redis, client.keys, request_id)
    if record is None:
        raise RequestNotFoundError.expired(request_id)
    done: Future[bytes] = Future()
    done.set_result(b"")
    return BackgroundResponse(client, record.get("app", ""), record.get("deployment", ""), request_id, done)


def lookup_record(client: redis.Redis, keys: Keys, request_id: str) -> dict[str, str]:
    """The status record of ``request_id`` (for the CLI and the gateway)."""
    record = background.record(client, keys, request_id)
    if record is None:
        raise RequestNotFoundError.expired(request_id)
    return record
