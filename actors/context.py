"""What a replica knows about itself and about the request it runs (``ray.serve.context``).

``serve.get_replica_context()`` returns the :class:`ReplicaContext` of the replica the
code runs in: its application, deployment, id, the user's object, and its rank among
the deployment's replicas (``rank``, a :class:`ReplicaRank`, and ``world_size``).
Outside a replica it raises Ray's ``RayServeException``.

The request context (``_serve_request_context``, Ray's private but widely used name)
holds the user-visible request id of the request running here: the HTTP client's
``X-Request-Id`` (or a new id) for a request from the gateway, shared by every call
made while serving it, so one id follows a request through a chain of deployments.
It is distinct from the internal id each call has (``_internal_request_id``).

Example::

    @serve.deployment(num_replicas=2)
    class Shard:
        def __call__(self) -> dict:
            ctx = serve.get_replica_context()
            request_id = serve.context._serve_request_context.get().request_id
            return {"rank": ctx.rank.rank, "of": ctx.world_size, "request": request_id}
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

from .exceptions import RayServeException

__all__ = ["DeploymentID", "ReplicaContext", "ReplicaID", "ReplicaRank", "get_replica_context"]

#: The prefix of a replica's full id string, as Ray writes it.
REPLICA_ID_FULL_ID_STR_PREFIX = "SERVE_REPLICA::"


@dataclass(frozen=True)
class DeploymentID:
    """A deployment, by name, within its application."""

    name: str
    app_name: str = "default"


@dataclass(frozen=True)
class ReplicaID:
    """A replica: its ``unique_id`` (8 hex characters) within its deployment."""

    unique_id: str
    deployment_id: DeploymentID

    def to_full_id_str(self) -> str:
        """``SERVE_REPLICA::app#deployment#unique_id``: mqserve's replica id, prefixed as Ray's."""
        dep = self.deployment_id
        return f"{REPLICA_ID_FULL_ID_STR_PREFIX}{dep.app_name}#{dep.name}#{self.unique_id}"

    @classmethod
    def from_replica_key(cls, key: str) -> ReplicaID:
        """The id of the replica whose registry key is ``app#deployment#unique_id``
        (app and deployment names may hold ``#``: the unique id is the last part)."""
        rest, _, unique_id = key.rpartition("#")
        app, _, deployment = rest.partition("#")
        return cls(unique_id, DeploymentID(deployment, app))

    def __str__(self) -> str:
        return (f"Replica(id='{self.unique_id}', deployment='{self.deployment_id.name}', "
                f"app='{self.deployment_id.app_name}')")


@dataclass(frozen=True)
class ReplicaRank:
    """A replica's place among its deployment's replicas (``ray.serve.schema.ReplicaRank``).

    ``rank`` is distinct among the deployment's replicas, 0 to N-1 once the deployment
    is at its target; ``node_rank`` numbers the workers hosting the deployment (0 to
    M-1); ``local_rank`` numbers the deployment's replicas on one worker (0 to K-1).
    """

    rank: int
    node_rank: int = 0
    local_rank: int = 0


@dataclass
class ReplicaContext:
    """The replica this code runs in (``ray.serve.context.ReplicaContext``).

    ``rank`` and ``world_size`` (the deployment's target number of replicas) are kept
    up to date in place: the controller may renumber replicas after a downscale, and
    autoscaling changes the target.
    """

    replica_id: ReplicaID
    servable_object: Any
    _deployment_config: Any
    rank: ReplicaRank
    world_size: int

    @property
    def app_name(self) -> str:
        return self.replica_id.deployment_id.app_name

    @property
    def deployment(self) -> str:
        return self.replica_id.deployment_id.name

    @property
    def replica_tag(self) -> str:
        return self.replica_id.unique_id


_INTERNAL_REPLICA_CONTEXT: ReplicaContext | None = None


def _get_internal_replica_context() -> ReplicaContext | None:
    return _INTERNAL_REPLICA_CONTEXT


def _set_internal_replica_context(context: ReplicaContext | None) -> None:
    """Set by the replica process before it builds the user's object."""
    global _INTERNAL_REPLICA_CONTEXT
    _INTERNAL_REPLICA_CONTEXT = context


def get_replica_context() -> ReplicaContext:
    """The context of the replica this code runs in (usable in ``__init__`` too).

    Raises:
        RayServeException: outside a replica (Ray's type and words).
    """
    context = _INTERNAL_REPLICA_CONTEXT
    if context is None:
        raise RayServeException("`serve.get_replica_context()` may only be called from within a "
                                "Ray Serve deployment.")
    return context


@dataclass(slots=True)
class _RequestContext:
    """The request running here, as Ray's ``_RequestContext``: read it, never change it
    (Ray's is frozen; this one is not, as it is built for every request and a frozen
    dataclass costs four times as much to build).

    ``route``: the route prefix for a request from the gateway, empty for a handle
    call; ``request_id``: the user-visible id (see the module's docstring);
    ``_internal_request_id``: this call's own id (its message id).
    """

    route: str = ""
    request_id: str = ""
    _internal_request_id: str = ""
    app_name: str = ""
    multiplexed_model_id: str = ""
    is_http_request: bool = False
    _deadline_ms: int = 0  # mqserve's: the request's deadline (Redis time), inherited by its calls


#: The request context of the code running here; unset outside a request.
_serve_request_context: contextvars.ContextVar[_RequestContext | None] = contextvars.ContextVar(
    "Serve internal request context variable", default=None)

_EMPTY = _RequestContext()


def _get_serve_request_context() -> _RequestContext:
    """The current request's context; an empty one outside a request, as in Ray."""
    return _serve_request_context.get() or _EMPTY
