"""The streamed result of a handle call (``handle.options(stream=True).remote()``).

:class:`DeploymentResponseGenerator` reads the items the replica's generator writes to
the request's Redis stream, through the process's :class:`~actors.runtime.caller.CallClient`;
``actors.handle`` makes the call and exports the class (as ``ray.serve.handle`` does).
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

from broker import codec, streams

from .exceptions import ServeException, cancelled_error, rebuild_remote_error
from .runtime import bridge
from .runtime.caller import CallClient

__all__ = ["DeploymentResponseGenerator"]


class _StreamState:
    """What a response generator and its reading loop share. Kept apart from the
    generator object so that the reading loop does not reference it: dropping the
    generator (``break`` out of ``for``) then frees it at once, which stops the stream."""

    def __init__(self, client: CallClient, req_id: str) -> None:
        self.client = client
        self.req_id = req_id
        self.stopped = False
        self.ended = False
        self.cancelled = False

    def is_stopped(self) -> bool:
        return self.stopped

    def close(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.client.end_stream(self.req_id, cancel=not self.ended)

    def cancel(self) -> None:
        """Stop the stream; reading on raises ``RequestCancelledError``."""
        if not self.ended:
            self.cancelled = True
        self.close()

    def decode(self, fields: dict[bytes, bytes]) -> list[Any]:
        if streams.ITEMS in fields:
            return streams.decode_items(fields[streams.ITEMS])
        self.ended = True
        if streams.ERROR in fields:
            _raise_failure(fields[streams.ERROR])
        return []


def _read_items(state: _StreamState) -> Any:
    try:
        for fields in state.client.stream_entries(state.req_id, state.is_stopped):
            yield from state.decode(fields)
            if state.ended:
                return
    finally:
        state.close()


async def _aread_items(state: _StreamState) -> Any:
    try:
        async for fields in state.client.stream_entries_async(state.req_id, state.is_stopped):
            for item in state.decode(fields):
                yield item
            if state.ended:
                return
    finally:
        state.close()


class DeploymentResponseGenerator:
    """The streamed result of ``handle.options(stream=True).remote()``: iterate it with
    ``for`` in sync code or ``async for`` in async code. Items arrive as the replica's
    generator yields them. Stopping early (``break``, ``close()``, ``cancel()``, or
    dropping it) stops the generator on the replica.
    """

    def __init__(self, client: CallClient, dep: str, req_id: str,
                 queued: concurrent.futures.Future[bytes]) -> None:
        self._state = _StreamState(client, req_id)
        self._dep = dep
        self._queued = queued
        self._sync: Any | None = None
        self._async: Any | None = None

    @property
    def request_id(self) -> str:
        return self._state.req_id

    def __iter__(self) -> DeploymentResponseGenerator:
        return self

    def __next__(self) -> Any:
        if bridge.running_loop() is not None:
            raise RuntimeError("Sync methods should not be called from within an `asyncio` event loop. "
                               "Use `async for` or `await gen.__anext__()` instead of `for` or `next()`.")
        self._raise_if_cancelled()
        if self._sync is None:
            self._queued.result()  # raises if the call could not be queued
            self._sync = _read_items(self._state)
        return next(self._sync)

    def __aiter__(self) -> DeploymentResponseGenerator:
        return self

    async def __anext__(self) -> Any:
        self._raise_if_cancelled()
        if self._async is None:
            await bridge.wait(self._queued)
            self._async = _aread_items(self._state)
        return await self._async.__anext__()

    def cancel(self) -> None:
        """Stop reading and stop the generator on the replica; reading on raises
        ``RequestCancelledError``, as in Ray."""
        self._state.cancel()

    def _raise_if_cancelled(self) -> None:
        if self._state.cancelled:
            raise cancelled_error(self._state.req_id)

    def close(self) -> None:
        """As for a generator: stop early (the replica's generator stops too)."""
        self._state.close()

    async def aclose(self) -> None:
        self._state.close()

    def __del__(self) -> None:
        try:
            if self._queued.done():
                self._state.close()
        except Exception:
            pass

    def __reduce__(self) -> Any:
        raise ServeException("A DeploymentResponseGenerator cannot be passed to another call; "
                             "iterate it and pass the items.")


def _raise_failure(outcome: bytes) -> None:
    """Raise the error the replica's generator ended the stream with."""
    ok, value = codec.decode_outcome(outcome)
    if not ok:
        raise rebuild_remote_error(value.exception, value.exc_type, value.type_name, value.message,
                                   value.traceback)
