"""The driver's connection to mqserve: which Redis, which local processes, which apps.

``serve.start`` creates one :class:`ServeContext` per process; ``serve.shutdown`` and
interpreter exit tear it down, stopping local processes in order (node, then Redis).

Two modes: with no Redis configured the context starts a private Redis, a node and a
gateway here (local mode); with ``MQSERVE_REDIS_URL`` or ``serve.start(redis_url=)`` it
starts nothing, and the cluster's ``mqserve worker`` processes host the replicas.
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from broker import codec
from broker.connection import connect, redact
from broker.errors import RouteConflictError
from broker.keys import Keys
from broker.registry import Registry

from ..config import ConfigError, LoggingConfig, Settings, user_config_tag
from ..deployment import Application, build_app, check_user_config
from ..exceptions import DeployFailedError, DeploymentUnavailableError, deleted_error, rebuild_remote_error
from ..handle import DeploymentHandle
from ..status import ServeStatus, collect_status
from . import instances
from .caller import close_clients
from .controller import heartbeat_fresh
from .local import LocalGateway, LocalNode, LocalRedis
from .packing import registry_fields

logger = logging.getLogger("mqserve")

#: Seconds between checks of the deploy state when no event arrives (events wake us sooner).
EVENT_WAIT_S = 0.5


class ServeContext:
    """Everything a driver process holds; created by ``serve.start``."""

    def __init__(self, settings: Settings, *, redis_url: str | None = None,
                 http_options: dict[str, Any] | None = None, start_processes: bool = True) -> None:
        self.settings = settings
        codec.use_secret(settings.secret)
        self.http_options = dict(http_options or {})
        self.local_redis: LocalRedis | None = None
        url = redis_url or settings.redis_url
        #: Cluster mode: replicas run on the cluster's workers, HTTP on its gateways.
        self.cluster = url is not None
        if url is None:
            self.local_redis = LocalRedis()
            url = self.local_redis.url
        self.url = url
        self.keys = Keys(settings.namespace)
        self.registry = Registry(connect(url), self.keys)
        try:
            self.registry.ping()
        except Exception as e:
            self._stop_local()
            raise ConnectionError(f"Cannot reach Redis at {redact(url)}: {e}. Check MQSERVE_REDIS_URL.") from e
        self.node: LocalNode | None = None
        self.gateway: LocalGateway | None = None
        #: This local instance's record, which lets operator commands find it (``instances``).
        self.record: str | None = None
        self.apps: set[str] = set()
        if start_processes:
            self.start_processes()

    def start_processes(self) -> None:
        """Local mode: start this driver's node and HTTP gateway (once)."""
        if self.node is not None or self.cluster:
            return
        settings = self.settings
        self.node = LocalNode(self.url, settings.namespace)
        host = self.http_options.get("host") or settings.http_host
        port = int(self.http_options.get("port") or settings.http_port)
        try:
            self.gateway = LocalGateway(self.url, settings.namespace, host, port,
                                        request_timeout_s=self.http_options.get("request_timeout_s"))
            self.gateway.wait_ready()
        except BaseException:
            self._stop_local()
            raise
        self.record = instances.register(self.url, settings.namespace, http=f"{host}:{port}")

    # Handles -------------------------------------------------------------------------------
    def handle(self, deployment: str, app: str) -> DeploymentHandle:
        return DeploymentHandle(deployment, app, _redis_url=self.url, _namespace=self.keys.ns,
                                _result_ttl_ms=self.settings.result_ttl_ms)

    # Deploy ---------------------------------------------------------------------------------
    def deploy(self, app: Application, name: str, route_prefix: str | None,
               overrides: dict[str, dict[str, Any]] | None = None,
               progress: Callable[[str], None] | None = None, *,
               logging_config: LoggingConfig | None = None) -> DeploymentHandle:
        """Register ``app`` and wait for its replicas; ``overrides`` maps deployment names
        to options (a config file's ``deployments`` section). ``progress`` gets a line
        each time the count of running replicas changes. ``logging_config`` (the
        application's) goes to the deployments that have none of their own."""
        self.start_processes()
        ingress, plans = build_app(app, lambda dep: self.handle(dep, name))
        unknown = set(overrides or {}) - {p.name for p in plans}
        if unknown:
            raise ConfigError(f"Application '{name}' has no deployment(s) named {', '.join(sorted(unknown))}; "
                              f"it has {', '.join(p.name for p in plans)}.")
        plans = [replace(p, config=p.config.with_options(**(overrides or {}).get(p.name, {}))) for p in plans]
        if logging_config is not None:
            plans = [p if p.config.logging_config is not None else
                     replace(p, config=replace(p.config, logging_config=logging_config.model_dump())) for p in plans]
        for p in plans:
            check_user_config(p)
        fields = {p.name: registry_fields(p, uuid.uuid4().hex[:12]) for p in plans}
        for p in plans:
            # Same code and options but user_config: keep the version, so the running
            # replicas reconfigure in place instead of being replaced (Ray's lightweight update).
            old = self.registry.deployment(name, p.name)
            if old is not None and not old["failed"] and old["spec"] == fields[p.name]["spec"] and \
                    _without_user_config(old["config"]) == _without_user_config(json.loads(fields[p.name]["config"])):
                fields[p.name]["version"] = old["version"]
        versions = {d: f["version"] for d, f in fields.items()}
        tags = {p.name: user_config_tag(p.config.user_config) for p in plans}
        record = {"name": name, "route_prefix": route_prefix, "ingress": ingress,
                  "deployments": [p.name for p in plans]}
        pubsub = self.registry.subscribe()
        try:
            try:
                self.registry.put_app(record, fields)
            except RouteConflictError as e:
                raise ConfigError(str(e)) from None
            self.apps.add(name)
            targets = {p.name: p.config.target_replicas for p in plans}
            self._await_running(name, versions, targets, tags, pubsub, progress)
        finally:
            pubsub.close()
        return self.handle(ingress, name)

    def _await_running(self, app: str, versions: dict[str, str], targets: dict[str, int], tags: dict[str, str],
                       pubsub: Any, progress: Callable[[str], None] | None = None) -> None:
        deadline = time.monotonic() + self.settings.deploy_timeout_s
        no_worker_since: float | None = None
        said = ""
        while True:
            records = self.registry.replica_sets(app, versions)
            for dep, reps in records.items():
                for rid, rec in reps.items():
                    if rec.get("version") == versions[dep] and rec.get("state") == "DEPLOY_FAILED":
                        raise self._constructor_error(app, dep, rid, rec)
            running = {d: sum(1 for r in records[d].values() if r.get("version") == v and r.get("state") == "RUNNING"
                              and r.get("user_config_tag") == tags[d]) for d, v in versions.items()}
            ready = all(running[d] >= targets[d] for d in versions)
            # An upgrade is done when older replicas no longer take requests.
            retired = not any(r.get("version") != versions[d] and r.get("state") in ("STARTING", "RUNNING")
                              for d in versions for r in records[d].values())
            if progress is not None:
                line = ", ".join(f"{d} {running[d]}/{targets[d]}" for d in versions)
                if line != said:
                    progress(f"application '{app}': replicas running: {line}")
                    said = line
            if ready and retired:
                return
            if self.node is not None and not self.node.alive():
                raise DeployFailedError("The local mqserve node process exited; see its output above.")
            if self.cluster:
                no_worker_since = self._check_workers(no_worker_since, progress)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeployFailedError(
                    f"Application '{app}' did not start within {self.settings.deploy_timeout_s} s "
                    "(MQSERVE_DEPLOY_TIMEOUT_S). Check the replica logs; serve.status() shows the state.")
            pubsub.get_message(timeout=min(EVENT_WAIT_S, remaining))

    def _check_workers(self, since: float | None, progress: Callable[[str], None] | None) -> float | None:
        """Fail a cluster deploy that has had no live worker for ``MQSERVE_WORKER_WAIT_S``."""
        if any(heartbeat_fresh(rec) for rec in self.registry.nodes().values()):
            return None
        if since is None:
            if progress is not None:
                progress(f"waiting for a worker: none is running for namespace '{self.keys.ns}'")
            return time.monotonic()
        if time.monotonic() - since > self.settings.worker_wait_s:
            raise DeployFailedError(
                f"No mqserve worker is running for namespace '{self.keys.ns}' on {redact(self.url)}, "
                f"so nothing can host the replicas. Start one: mqserve worker --redis-url URL "
                "(or unset MQSERVE_REDIS_URL to run everything in this process's machine).")
        return since

    def _constructor_error(self, app: str, dep: str, rid: str, rec: dict[str, Any]) -> BaseException:
        blob = self.registry.replica_error(rid)
        if blob:
            ok, failure = codec.decode_outcome(blob)
            if not ok:
                return rebuild_remote_error(failure.exception, failure.exc_type, failure.type_name,
                                            failure.message, failure.traceback)
        return DeployFailedError(f"Deployment '{dep}' of application '{app}' failed to start:\n"
                                 f"{rec.get('message', '')}")

    # Delete and status --------------------------------------------------------------------------
    def delete(self, name: str, blocking: bool = True) -> None:
        record = self.registry.app(name)
        if record is None:
            return
        pubsub = self.registry.subscribe()
        try:
            self.registry.delete_app(name, self.settings.result_ttl_ms, deleted_error(name))
            self.apps.discard(name)
            deadline = time.monotonic() + 60
            while blocking and time.monotonic() < deadline:
                sets = self.registry.replica_sets(name, record["deployments"])
                if not any(sets.values()):
                    return
                if self.node is not None and not self.node.alive():
                    return
                pubsub.get_message(timeout=EVENT_WAIT_S)
        finally:
            pubsub.close()

    def status(self) -> ServeStatus:
        return collect_status(self.registry)

    def app_record(self, name: str) -> dict[str, Any]:
        record = self.registry.app(name)
        if record is None:
            raise DeploymentUnavailableError(f"Application '{name}' does not exist. Deploy it with serve.run().")
        return record

    # Shutdown ---------------------------------------------------------------------------------
    def shutdown(self, delete_apps: bool = True) -> None:
        try:
            for name in list(self.apps if delete_apps else ()):
                self.delete(name, blocking=False)
        except Exception as e:
            logger.warning("mqserve: could not delete apps at shutdown: %s", e)
        close_clients()
        self._stop_local()

    def _stop_local(self) -> None:
        instances.unregister(getattr(self, "record", None))  # first: nobody finds a Redis that is stopping
        self.record = None
        if getattr(self, "gateway", None) is not None:
            self.gateway.stop()  # type: ignore[union-attr]  # getattr (unset if __init__ failed early) does not narrow
            self.gateway = None
        if getattr(self, "node", None) is not None:
            self.node.stop()  # type: ignore[union-attr]  # getattr (unset if __init__ failed early) does not narrow
            self.node = None
        if self.local_redis is not None:
            self.local_redis.stop()
            self.local_redis = None


def _without_user_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "user_config"}


_context: ServeContext | None = None
_context_lock = threading.RLock()


def get_context(*, start: bool = True, **start_kwargs: Any) -> ServeContext:
    global _context
    with _context_lock:
        if _context is None:
            settings = Settings.from_env()
            if not start and settings.redis_url is None:
                raise DeploymentUnavailableError(
                    "mqserve is not running in this process: call serve.run() first, or set "
                    "MQSERVE_REDIS_URL to reach the Redis of a running mqserve.")
            # Without start, connect to the configured Redis for handles only.
            _context = ServeContext(settings, start_processes=start, **start_kwargs)
        return _context


def current_context() -> ServeContext | None:
    return _context


def existing_context() -> ServeContext | None:
    """This process's context, or, with a cluster configured (``MQSERVE_REDIS_URL``), a
    connection to it (which starts nothing); None in local mode before ``serve.start``."""
    if _context is None and Settings.from_env().redis_url is None:
        return None
    return get_context(start=False)


def shutdown_context(*, keep_cluster_apps: bool = False) -> None:
    """Tear down this process's context. ``keep_cluster_apps``: leave the apps deployed on
    a cluster running, as at interpreter exit (Ray Serve's apps outlive their driver);
    local mode stops everything anyway."""
    global _context
    with _context_lock:
        ctx, _context = _context, None
    if ctx is not None:
        ctx.shutdown(delete_apps=not (keep_cluster_apps and ctx.cluster))


atexit.register(shutdown_context, keep_cluster_apps=True)
