"""Redis connections: one factory, so TLS, passwords and reconnects are handled once."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

#: Seconds to wait for a TCP (or TLS) connection to Redis before giving up.
CONNECT_TIMEOUT_S = 5.0
#: Attempts after a failed command before it raises (long outages are ridden out by
#: the loops that own connections, not by blocking one command for long).
CONNECT_RETRIES = 3
#: Longest pause between two attempts, in seconds.
CONNECT_RETRY_CAP_S = 0.5


def connect(url: str, *, max_connections: int | None = None, client_name: str | None = None) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://``, ``unix://``; passwords in the URL).

    Commands are retried across a dropped connection, so a restarted Redis is survived
    by reconnecting. Socket reads have no timeout because blocking commands
    (BLMOVE, BLPOP) carry their own. ``client_name`` shows in ``CLIENT LIST``.
    """
    options = _options(url, client_name)
    options["retry"] = Retry(ExponentialBackoff(cap=CONNECT_RETRY_CAP_S, base=0.02), retries=CONNECT_RETRIES)
    options["max_connections"] = max_connections
    return redis.Redis.from_url(url, **options)


def connect_async(url: str, *, client_name: str | None = None) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`connect`, for code running on an event loop."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry as AsyncRetry

    options = _options(url, client_name)
    options["retry"] = AsyncRetry(ExponentialBackoff(cap=CONNECT_RETRY_CAP_S, base=0.02), retries=CONNECT_RETRIES)
    return aioredis.Redis.from_url(url, **options)


def _options(url: str, client_name: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": None,
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "client_name": client_name,
    }
    if not url.startswith("unix:"):  # keepalive is a TCP option
        options["socket_keepalive"] = True
    return options


def redact(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    from urllib.parse import urlsplit

    password = urlsplit(url).password
    return url.replace(f":{password}@", ":***@", 1) if password else url
