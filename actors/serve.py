"""The ``serve`` API: ``from actors import serve`` in place of ``from ray import serve``.

Example::

    from actors import serve

    @serve.deployment
    class Hello:
        def __call__(self, name: str) -> str:
            return f"Hello {name}!"

    handle = serve.run(Hello.bind())
    assert handle.remote("Dora").result() == "Hello Dora!"
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from broker.connection import redact

from . import context
from . import ingress as _ingress
from .batching import batch
from .config import (
    BackpressureConfig,
    ConfigError,
    DeploymentConfig,
    LoggingConfig,
    check_http_options,
    check_route_prefix,
)
from .context import get_replica_context
from .deployment import Application, Deployment
from .exceptions import DeploymentUnavailableError
from .handle import DeploymentHandle, DeploymentResponse
from .multiplex import get_multiplexed_model_id, multiplexed
from .runtime import context as _ctx
from .runtime.caller import get_client
from .status import ServeStatus

__all__ = [
    "deployment", "run", "start", "status", "delete", "shutdown", "ingress", "batch",
    "get_app_handle", "get_deployment_handle", "get_replica_context", "Application", "Deployment",
    "context", "multiplexed", "get_multiplexed_model_id", "get_response",
]

_UNSET: Any = object()


def deployment(
    _func_or_class: Callable[..., Any] | str | None = None,
    *,
    name: str | None = None,
    num_replicas: int | str | None = _UNSET,
    max_ongoing_requests: int = _UNSET,
    max_queued_requests: int = _UNSET,
    autoscaling_config: dict[str, Any] | None = _UNSET,
    user_config: Any = _UNSET,
    health_check_period_s: float = _UNSET,
    health_check_timeout_s: float = _UNSET,
    graceful_shutdown_timeout_s: float = _UNSET,
    graceful_shutdown_wait_loop_s: float = _UNSET,
    ray_actor_options: dict[str, Any] | None = _UNSET,
    max_request_retries: int = _UNSET,
    logging_config: LoggingConfig | dict[str, Any] | None = _UNSET,
    backpressure_config: dict[str, Any] | BackpressureConfig | None = _UNSET,
    **unsupported: Any,
) -> Any:
    """Make a class or function a deployment; works bare (``@serve.deployment``) or with options.

    Options and defaults are Ray Serve's: ``num_replicas=1``, ``max_ongoing_requests=5``,
    ``max_queued_requests=-1`` (unlimited). ``ray_actor_options`` is accepted and advisory.
    ``max_request_retries`` (mqserve's own, default 0) is how many times a request is run
    again on another replica when the replica running it dies; with 0 its caller gets
    ``ReplicaDiedError``, as in Ray Serve. ``logging_config`` (a dict or a
    :class:`~actors.config.LoggingConfig`) says how its replicas log. ``backpressure_config``
    (Ray's, e.g. ``{"status_code": 429, "retry_after_s": 7}``) is how HTTP answers a request
    refused by ``max_queued_requests``: 503 without ``Retry-After`` unless it says otherwise.
    """
    given = {k: v for k, v in {
        "num_replicas": num_replicas, "max_ongoing_requests": max_ongoing_requests,
        "max_queued_requests": max_queued_requests, "autoscaling_config": autoscaling_config,
        "user_config": user_config, "health_check_period_s": health_check_period_s,
        "health_check_timeout_s": health_check_timeout_s,
        "graceful_shutdown_timeout_s": graceful_shutdown_timeout_s,
        "graceful_shutdown_wait_loop_s": graceful_shutdown_wait_loop_s,
        "ray_actor_options": ray_actor_options, "max_request_retries": max_request_retries,
        "logging_config": logging_config, "backpressure_config": backpressure_config,
    }.items() if v is not _UNSET}
    config = _deployment_config(given, unsupported)

    def decorate(func_or_class: Callable[..., Any]) -> Deployment:
        return Deployment(func_or_class, name or func_or_class.__name__, config)

    if isinstance(_func_or_class, str):  # @serve.deployment("name", ...), as Ray allows
        if name is not None and name != _func_or_class:
            raise ConfigError(f"@serve.deployment got two names: {_func_or_class!r} and name={name!r}")
        name, _func_or_class = _func_or_class, None
    return decorate(_func_or_class) if _func_or_class is not None else decorate


def _deployment_config(given: dict[str, Any], unsupported: dict[str, Any]) -> DeploymentConfig:
    """The options given to ``@serve.deployment``, checked; Ray's deprecated ``version``
    and ``route_prefix`` are accepted and ignored."""
    unsupported.pop("version", None)
    unsupported.pop("route_prefix", None)
    if unsupported:
        raise ConfigError(f"@serve.deployment got unknown option(s): {', '.join(sorted(unsupported))}")
    if given.get("ray_actor_options") is None:
        given.pop("ray_actor_options", None)
    return DeploymentConfig(**given, max_ongoing_requests_set="max_ongoing_requests" in given)


def start(redis_url: str | None = None, http_options: dict[str, Any] | None = None,
          **_ignored: Any) -> None:
    """Connect this process to mqserve; with no Redis configured, start a private one.

    ``redis_url`` (or ``MQSERVE_REDIS_URL``) points at a cluster's Redis: replicas then
    run on its ``mqserve worker`` processes and HTTP goes through its ``mqserve gateway``
    processes; nothing starts here. Otherwise (local mode) a private ``redis-server``, a
    node and a gateway start here and stop at ``shutdown()`` or exit. Called implicitly
    by ``run()``. ``http_options`` configures that gateway: ``host``, ``port`` and
    ``request_timeout_s`` (408 and a cancelled request past it; ``MQSERVE_HTTP_TIMEOUT_S``
    otherwise); a cluster's gateways take theirs from their own settings.
    """
    http_options = check_http_options(http_options)
    ctx = _ctx.current_context()
    if ctx is not None:
        if redis_url is not None and redis_url != ctx.url:
            raise ConfigError(f"mqserve is already connected to {redact(ctx.url)}; call serve.shutdown() first.")
        return
    _ctx.get_context(redis_url=redis_url, http_options=http_options)


def run(target: Application, *, name: str = "default", route_prefix: str | None = "/",
        blocking: bool = False, logging_config: LoggingConfig | dict[str, Any] | None = None,
        _local_testing_mode: bool = False, **_ignored: Any) -> DeploymentHandle:
    """Deploy (or upgrade, if ``name`` exists) an application; returns a handle to its ingress.

    Returns once every deployment has its replicas running. Raises the constructor's own
    exception if a deployment fails to start, and ``ValueError`` for a ``route_prefix``
    Ray Serve refuses (see ``check_route_prefix``). ``logging_config`` applies to the
    deployments that set none of their own, as in Ray.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError("the application name must be a non-empty string")
    check_route_prefix(route_prefix)
    handle = _ctx.get_context().deploy(target, name, route_prefix,
                                       logging_config=LoggingConfig.parse(logging_config))
    if blocking:
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            shutdown()
    return handle


def status() -> ServeStatus:
    """Applications, deployments and replica states, in Ray Serve's shape.

    Empty (no applications) before anything runs: in local mode nothing is started to
    answer. With ``MQSERVE_REDIS_URL`` set, it reads the cluster's Redis, as a Ray
    driver reads its cluster's status, without starting anything.
    """
    ctx = _ctx.existing_context()
    return ctx.status() if ctx is not None else ServeStatus()


def delete(name: str, _blocking: bool = True) -> None:
    """Delete an application; its queued requests fail with ``DeploymentUnavailableError``."""
    ctx = _ctx.current_context()
    if ctx is not None:
        ctx.delete(name, blocking=_blocking)


def shutdown() -> None:
    """Delete this driver's applications and stop the local processes it started.

    In cluster mode the workers and gateways keep running. A driver that exits without
    calling this leaves its cluster applications running, as Ray Serve's do.
    """
    _ctx.shutdown_context()


def get_app_handle(name: str) -> DeploymentHandle:
    """A handle to the ingress of a running application."""
    ctx = _ctx.get_context(start=False)
    record = ctx.app_record(name)
    return ctx.handle(record["ingress"], name)


def get_deployment_handle(deployment_name: str, app_name: str = "default") -> DeploymentHandle:
    """A handle to any deployment of a running application."""
    ctx = _ctx.get_context(start=False)
    record = ctx.app_record(app_name)
    if deployment_name not in record["deployments"]:
        raise DeploymentUnavailableError(
            f"Application '{app_name}' has no deployment '{deployment_name}'; "
            f"it has: {', '.join(record['deployments'])}.")
    return ctx.handle(deployment_name, app_name)


def get_response(request_id: str) -> DeploymentResponse:
    """The response of a background request (``handle.options(background=True)``, or HTTP
    with ``Prefer: respond-async``) by its ``request_id``, from any process that reaches
    mqserve's Redis: ``await`` it, ``.result(timeout_s=)``, ``.cancel()``, ``.status()``
    (``"QUEUED"``, ``"RUNNING"``, ``"SUCCEEDED"``, ``"FAILED"``, ``"CANCELLED"``).

    Raises :class:`~actors.exceptions.RequestNotFoundError` (a ``KeyError``) for an
    unknown id, or one whose outcome expired (``MQSERVE_BACKGROUND_TTL_S`` after it ended).
    """
    from .runtime import background

    ctx = _ctx.get_context(start=False)
    return background.lookup(get_client(ctx.url, ctx.keys, result_ttl_ms=ctx.settings.result_ttl_ms), request_id)


def ingress(app: Any) -> Callable[[type], type]:
    """Serve HTTP requests to the application through ``app`` (Starlette or FastAPI).

    Put it under ``@serve.deployment``; FastAPI routes may be methods of the class. As
    in Ray Serve, the deployment serves the app as it is when the class is decorated
    (method routes of other classes decorated with the same app are theirs), its
    lifespan starts after the constructor on each replica (a failing startup fails the
    deploy with ``RuntimeError``) and shuts down when the replica stops::

        fastapi_app = FastAPI()

        @serve.deployment
        @serve.ingress(fastapi_app)
        class Api:
            @fastapi_app.get("/{name}")
            async def say_hi(self, name: str) -> str:
                return f"Hello {name}!"
    """
    if not callable(app):
        raise TypeError(f"@serve.ingress takes an ASGI app (Starlette or FastAPI), got {type(app).__name__}")

    def decorate(cls: type) -> type:
        if not isinstance(cls, type):
            raise TypeError("@serve.ingress decorates a class; put it under @serve.deployment")
        cls._mq_ingress_app = _ingress.prepare(app, cls)  # type: ignore[attr-defined]  # a class takes attributes; read back with getattr
        return cls

    return decorate
