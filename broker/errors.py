"""The root of mqserve's own errors, and the transport's.

Every exception mqserve raises itself derives from :class:`MQServeError`: those of the
Ray-compatible API through ``actors.exceptions.ServeException`` (Ray's
``RayServeException``), the transport's through :class:`BrokerError`. The root lives
here, at the bottom, because ``broker/`` imports nothing above it. Where callers already
catch a builtin (``ValueError``), an error derives from that too.
"""

from __future__ import annotations


class MQServeError(Exception):
    """Root of every error mqserve raises itself."""


class BrokerError(MQServeError):
    """An error of the Redis transport; translated into an API error at the boundary
    where a user can act on it."""


class ForgedMessageError(BrokerError, ValueError):
    """A blob read from Redis is unsigned, or its signature does not match
    ``MQSERVE_SECRET``: it was not written by an mqserve process holding the secret."""


class RouteConflictError(BrokerError, ValueError):
    """Another application already serves this route prefix."""
