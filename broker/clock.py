"""Redis's clock, as this process reads it.

The wall clocks of different machines disagree, by seconds when one lacks NTP, so a
time written by one process and compared by another is taken from one clock: Redis's.
A process learns how far its own clock is from Redis's from a ``TIME`` reply
(:func:`sync`, and every data-loss check in :mod:`broker.epoch`, which long-lived
processes make every few seconds, so a clock that jumps is followed), then reads Redis's
time without a round trip (:func:`now`).
"""

from __future__ import annotations

import time
from typing import Any

import redis

#: Redis's clock minus this process's, in seconds; None until a first reading.
_offset_s: float | None = None


def seconds(reply: Any) -> float:
    """A ``TIME`` reply (seconds, microseconds) in seconds."""
    sec, usec = reply
    return int(sec) + int(usec) / 1_000_000


def observe(reply: Any, sent_at: float, received_at: float) -> None:
    """Learn the offset from a ``TIME`` reply asked at ``sent_at`` and received at
    ``received_at`` (this process's clock): Redis read its clock about halfway."""
    global _offset_s
    _offset_s = seconds(reply) - (sent_at + received_at) / 2


def sync(client: redis.Redis) -> None:
    """Read Redis's clock now (one round trip). If Redis cannot be reached, the last
    reading stays; the next data-loss check tries again."""
    sent_at = time.time()
    try:
        reply = client.time()
    except redis.RedisError:
        return
    observe(reply, sent_at, time.time())


def now() -> float | None:
    """Redis's time in seconds, from this process's clock; None before any reading."""
    return None if _offset_s is None else time.time() + _offset_s


def deadline_in(timeout_s: float) -> int:
    """The deadline (Redis time, ms) of a request that must finish within ``timeout_s``."""
    return int((_now_or_local() + timeout_s) * 1000)


def seconds_left(deadline_ms: int) -> float:
    """Seconds until ``deadline_ms`` (Redis time); negative once it passed."""
    return deadline_ms / 1000 - _now_or_local()


def _now_or_local() -> float:
    """Redis's time, or this process's before it has read Redis's clock (a caller reads it
    when it connects, so this is for processes that never talked to Redis yet)."""
    redis_now = now()
    return time.time() if redis_now is None else redis_now
