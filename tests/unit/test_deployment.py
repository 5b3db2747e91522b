"""The decorator, options and the application graph, without any process."""

from __future__ import annotations

import pytest

from actors import serve
from actors.config import ConfigError, DeploymentConfig, Settings
from actors.deployment import build_app


@serve.deployment
class A:
    pass


@serve.deployment(num_replicas=3, max_ongoing_requests=9, max_queued_requests=4, user_config={"t": 1})
class B:
    pass


@serve.deployment
def f() -> int:
    return 1


def test_defaults_are_ray_serves() -> None:
    c = A.config
    assert (c.num_replicas, c.max_ongoing_requests, c.max_queued_requests) == (1, 5, -1)
    assert (c.health_check_period_s, c.health_check_timeout_s, c.graceful_shutdown_timeout_s) == (10, 30, 20)
    assert B.num_replicas == 3 and B.max_ongoing_requests == 9 and B.user_config == {"t": 1}
    assert f.name == "f"


def test_options_returns_a_new_deployment() -> None:
    c = A.options(name="A2", num_replicas=2)
    assert c.name == "A2" and c.num_replicas == 2
    assert A.name == "A" and A.num_replicas == 1


@pytest.mark.parametrize("options", [
    {"num_replicas": -1}, {"num_replicas": "many"}, {"max_ongoing_requests": 0},
    {"max_queued_requests": 0}, {"user_config": object()}, {"health_check_period_s": -1},
    {"autoscaling_config": {"min_replicas": 3, "max_replicas": 2}}, {"bogus": 1},
])
def test_bad_options_are_clear_errors(options) -> None:
    with pytest.raises(ConfigError):
        serve.deployment(**options)(type("X", (), {}))


def test_auto_replicas_use_rays_autoscaling_defaults() -> None:
    auto = DeploymentConfig(num_replicas="auto").autoscaling_config
    assert auto is not None
    assert (auto["min_replicas"], auto["max_replicas"], auto["target_ongoing_requests"]) == (1, 100, 2.0)
    assert DeploymentConfig(autoscaling_config={"min_replicas": 2, "max_replicas": 5}).target_replicas == 2


def test_constructing_a_deployment_directly_is_refused() -> None:
    with pytest.raises(RuntimeError, match="bind"):
        A()


def test_build_app_names_and_swaps_nested_applications() -> None:
    shared = A.bind()
    app = B.bind(shared, [A.bind(), {"k": shared}], extra=(f.bind(),))
    ingress, plans = build_app(app, lambda name: f"<handle {name}>")
    assert ingress == "B"
    assert [p.name for p in plans] == ["A", "A_1", "f", "B"]
    root = plans[-1]
    assert root.init_args == ("<handle A>", ["<handle A_1>", {"k": "<handle A>"}])
    assert root.init_kwargs == {"extra": ("<handle f>",)}


def test_build_app_needs_an_application() -> None:
    with pytest.raises(TypeError, match="bind"):
        build_app(A, lambda name: name)  # type: ignore[arg-type]


def test_settings_from_env() -> None:
    s = Settings.from_env({"MQSERVE_REDIS_URL": "redis://h:1/0", "MQSERVE_HTTP_PORT": "9000"})
    assert s.redis_url == "redis://h:1/0" and s.http_port == 9000
    with pytest.raises(ConfigError, match="MQSERVE_HTTP_PORT"):
        Settings.from_env({"MQSERVE_HTTP_PORT": "eighty"})


@pytest.mark.parametrize("name, value, says", [
    ("MQSERVE_LOG_LEVEL", "chatty", "not a log level"),
    ("MQSERVE_MAX_BODY_BYTES", "lots", "not a valid int"),
    ("MQSERVE_MAX_BODY_BYTES", "0", "must be positive"),
    ("MQSERVE_HTTP_TIMEOUT_S", "-1", "must be positive"),
])
def test_every_setting_is_validated_where_it_is_read(name: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Settings.from_env({name: value})


def test_settings_of_the_gateway_and_local_mode_come_from_the_one_settings_object() -> None:
    settings = Settings.from_env({"MQSERVE_LOG_LEVEL": "debug", "MQSERVE_MAX_BODY_BYTES": "1024",
                                  "MQSERVE_HTTP_TIMEOUT_S": "2.5", "MQSERVE_REDIS_SERVER": "/opt/redis-server"})
    assert (settings.log_level, settings.max_body_bytes, settings.http_timeout_s, settings.redis_server) == (
        "DEBUG", 1024, 2.5, "/opt/redis-server")
    defaults = Settings.from_env({})
    assert (defaults.log_level, defaults.max_body_bytes, defaults.http_timeout_s) == ("INFO", 100 * 1024 * 1024, None)
