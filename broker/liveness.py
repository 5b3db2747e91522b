"""Liveness, one mechanism for every member: a key that lives while its owner says so.

A caller's reply listener, a worker (node), a gateway and the controller's leader each
keep a key of their own alive by setting it again, with a TTL, more often than the TTL
runs out. Expiry is Redis's doing, in Redis's clock: no two machines' clocks are ever
compared, and a member that dies (its process, its machine or its network) is gone when
its key expires, without anyone having to notice first.

The controller lease is the same key with one rule more: only its holder may set it again
(``lead.lua``), or delete it (``resign.lua``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import redis

from . import scripts


def beat(pipe: Any, key: str, ttl_ms: int) -> None:
    """Say that ``key``'s owner lives, for ``ttl_ms`` more (queued on ``pipe``, a pipeline
    of a sync or an asyncio client). The value is the TTL, so that :func:`ages` can tell
    how long ago this was said."""
    pipe.set(key, ttl_ms, px=ttl_ms)


def ages(client: redis.Redis, keys: Sequence[str]) -> list[float | None]:
    """Seconds since the owner of each key last said it lives; None where it is gone."""
    if not keys:
        return []
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
        pipe.pttl(key)
    replies = pipe.execute()
    out: list[float | None] = []
    for ttl, left in zip(replies[::2], replies[1::2]):
        out.append(None if ttl is None or left < 0 else max(0.0, (int(ttl) - left) / 1000))
    return out


def lead(client: redis.Redis, key: str, candidate: str, ttl_ms: int) -> bool:
    """Take the lease ``key`` for ``candidate``, or keep it: True if it holds it now."""
    return bool(scripts.LEAD(client, (key,), (candidate, ttl_ms)))


def holder(client: redis.Redis, key: str) -> str | None:
    """Who holds the lease ``key``, if anyone."""
    raw = cast("bytes | None", client.get(key))
    return raw.decode() if raw else None


def resign(client: redis.Redis, key: str, candidate: str) -> None:
    """Give up the lease, unless it expired and another candidate took it meanwhile."""
    scripts.RESIGN(client, (key,), (candidate,))
