"""What a replica process knows about itself: its :class:`~actors.context.ReplicaContext`
(``serve.get_replica_context()``) and its log, both set up before the user's
constructor runs, as in Ray, so ``__init__`` can use them.

Its rank and world size come from its assignment record (see :mod:`.ranks`); the
replica reads it again on its application's events (:func:`refresh_rank`), so the
context follows a renumbering or an autoscaling step.
"""

from __future__ import annotations

import logging
from typing import Any

from broker.registry import Registry

from ..config import DeploymentConfig, LoggingConfig
from ..context import (
    DeploymentID,
    ReplicaContext,
    ReplicaID,
    _get_internal_replica_context,
    _set_internal_replica_context,
)
from . import logs, ranks
from .access import AccessLog

logger = logging.getLogger("mqserve.replica")


def enter(registry: Registry, *, app: str, deployment: str, replica_id: str, node_id: str,
          config: DeploymentConfig, log_level: str, logs_dir: str) -> AccessLog | None:
    """Set this process's replica context and log; returns its access log (None when
    the deployment turned access logs off)."""
    unique_id = ReplicaID.from_replica_key(replica_id).unique_id
    rank, world_size = ranks.rank_of(registry.assignment(node_id, replica_id))
    _set_internal_replica_context(ReplicaContext(
        replica_id=ReplicaID(unique_id, DeploymentID(deployment, app)), servable_object=None,
        _deployment_config=config, rank=rank, world_size=world_size))
    logging_config = LoggingConfig.parse(config.logging_config) or LoggingConfig(log_level=log_level)
    path = logs.configure(logging_config, logs.ReplicaIdentity(app, deployment, unique_id), logs_dir)
    if path is not None:
        logger.info("replica %s logs to %s", unique_id, path)
    return AccessLog() if logging_config.enable_access_log else None


def serving(target: Any) -> None:
    """The user's object is built: the context's ``servable_object``."""
    context = _get_internal_replica_context()
    if context is not None:
        context.servable_object = target


def refresh_rank(registry: Registry, node_id: str, replica_id: str) -> None:
    """Read the replica's rank and world size again (the controller may have changed them)."""
    context = _get_internal_replica_context()
    record = registry.assignment(node_id, replica_id)
    if context is None or record is None:  # unassigned: it is stopping, and keeps its rank
        return
    rank, world_size = ranks.rank_of(record)
    if (rank, world_size) != (context.rank, context.world_size):
        logger.info("replica %s is now rank %d of %d", context.replica_tag, rank.rank, world_size)
        context.rank, context.world_size = rank, world_size
