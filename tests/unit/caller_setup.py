"""What the caller's unit tests share: a CallClient's settings, and a call to send."""

from __future__ import annotations

from concurrent.futures import Future

from actors.runtime.caller import CallClient
from broker import codec
from broker.keys import Keys

TTL_MS = 60_000
KEYS = Keys("unit")


def submit(client: CallClient, consumes: tuple[str, ...] = ()) -> tuple[str, Future[bytes]]:
    """Send a request to ``app/Dep``; its id and future."""
    req_id = codec.new_request_id()
    return req_id, client.submit("app", "Dep", req_id, b"message", consumes)
