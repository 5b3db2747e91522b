"""Redis connections: one factory, so TLS, passwords and reconnects are handled once."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

#: Seconds to wait for a TCP (or TLS) connection to Redis before giving up.
CONNECT_TIMEOUT_S = 5.0


def connect(url: str, *, max_connections: int | None = None, client_name: str | None = None) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://``, ``unix://``; passwords in the URL).

    Commands are retried across a dropped connection, so a restarted Redis is survived
    by reconnecting. Socket reads have no timeout because blocking commands
    (BLMOVE, BLPOP) carry their own. ``client_name`` shows in ``CLIENT LIST``.
    """
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.01), retries=8)
    options: dict[str, object] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": None,
        "retry": retry,
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "max_connections": max_connections,
        "client_name": client_name,
    }
    if not url.startswith("unix:"):
        options["socket_keepalive"] = True
    return redis.Redis.from_url(url, **options)
