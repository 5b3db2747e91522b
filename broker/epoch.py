"""Telling a Redis that restarted empty from one that kept its data.

Every process that owns state in Redis remembers the server's ``run_id`` (new at every
start). When it changes, the process asks :func:`check`: the namespace's epoch key
(``Keys.epoch``, written when an app is registered) survives a restart with
persistence; if it is gone, the first process to look marks the epoch as lost for this
run, and every owner then writes its own records back (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import time

import redis

from . import clock
from .keys import Keys


def server_id(client: redis.Redis) -> str:
    """The server's ``run_id``. The same round trip reads Redis's clock (see
    :mod:`broker.clock`), so that every process that watches for data loss also
    keeps its reading of that clock fresh."""
    sent_at = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.info("server")
    pipe.time()
    info, now = pipe.execute()
    clock.observe(now, sent_at, time.time())
    return str(info["run_id"])


def check(client: redis.Redis, keys: Keys, seen: str | None) -> tuple[bool, str]:
    """``(lost, run_id)``: whether Redis restarted without our data since ``seen`` (the
    run_id this process saw last; None at start, which never counts as lost)."""
    run_id = server_id(client)
    if seen is None or run_id == seen:
        return False, run_id
    marker = f"lost:{run_id}".encode()
    pipe = client.pipeline(transaction=False)
    pipe.set(keys.epoch, marker, nx=True)
    pipe.get(keys.epoch)
    return pipe.execute()[1] == marker, run_id


class Watch:
    """Asks :func:`check`, at most every ``every_s``, so that a listener can ask on every
    round without a round trip each time."""

    def __init__(self, client: redis.Redis, keys: Keys, every_s: float) -> None:
        self.client, self.keys, self.every_s = client, keys, every_s
        self.run_id: str | None = None
        self.at = 0.0

    def lost(self) -> bool:
        """Whether Redis restarted without our data since the last look."""
        if time.monotonic() - self.at < self.every_s:
            return False
        self.at = time.monotonic()
        lost, self.run_id = check(self.client, self.keys, self.run_id)
        return lost
