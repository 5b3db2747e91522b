"""Per-deployment counters an operator reads (``/metrics``, ``mqserve queue``).

One HASH per deployment (``keys.counts(app, dep)``), a field per event, e.g. ``expired``
(requests a replica dropped, or cancelled, because their deadline passed). Written only
when the event happens, so a request that goes well costs nothing here; deleted with
its application.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from .keys import Keys

#: A request dropped unrun, or cancelled while running, because its deadline passed.
EXPIRED = "expired"


async def add(aio: Any, keys: Keys, app: str, dep: str, field: str, n: int = 1) -> None:
    """Count ``n`` more ``field`` events of deployment ``app/dep`` (on a ``redis.asyncio`` client)."""
    await aio.hincrby(keys.counts(app, dep), field, n)


def read(client: redis.Redis, keys: Keys, deployments: Sequence[tuple[str, str]]) -> list[dict[str, int]]:
    """The counters of each ``(app, dep)``, in order ({} where nothing was counted)."""
    pipe = client.pipeline(transaction=False)
    for app, dep in deployments:
        pipe.hgetall(keys.counts(app, dep))
    return [{k.decode(): int(v) for k, v in raw.items()} for raw in pipe.execute()]
