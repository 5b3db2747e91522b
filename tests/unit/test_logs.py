"""A replica's log (actors/runtime/logs.py, access.py): what a line carries, in TEXT and
JSON, where it goes, and what LoggingConfig turns off."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from actors.config import ConfigError, DeploymentConfig, LoggingConfig
from actors.context import _RequestContext, _serve_request_context
from actors.exceptions import RequestCancelledError
from actors.runtime import logs
from actors.runtime.access import AccessLog, route_of
from broker import codec

IDENTITY = logs.ReplicaIdentity("app1", "Model", "abcd1234")


@pytest.fixture(autouse=True)
def _restore_loggers() -> Iterator[None]:
    """configure() rewires process-wide loggers: put them back after each test."""
    saved = {name: (lg.handlers[:], lg.level, lg.propagate)
             for name in (logs.SERVE_LOGGER_NAME, logs.OWN_LOGGER_NAME) for lg in [logging.getLogger(name)]}
    yield
    for name, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(name)
        for handler in lg.handlers:
            handler.close()
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def _configure(tmp_path: Path, **config: object) -> Path:
    path = logs.configure(LoggingConfig(logs_dir=str(tmp_path), **config), IDENTITY, "/nonexistent")  # type: ignore[arg-type]
    assert path is not None
    return Path(path)


def _in_request(request_id: str) -> object:
    return _serve_request_context.set(_RequestContext("/r", request_id, "internal", "app1", "", True))


def test_json_lines_carry_the_replica_and_the_running_request(tmp_path: Path) -> None:
    # Given a replica logging JSON
    path = _configure(tmp_path, encoding="JSON")
    assert path.name == "replica_app1_Model_abcd1234.log"
    user = logging.getLogger("ray.serve")
    # When user code logs outside, then inside, a request; and mqserve's own loggers log
    user.info("outside")
    token = _in_request("req-42")
    try:
        user.info("inside %s", 1, extra={"k": "v"})
        logging.getLogger("mqserve.replica").warning("own")
    finally:
        _serve_request_context.reset(token)  # type: ignore[arg-type]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    # Then every line names the application, deployment (Ray's app_dep) and replica...
    for line in lines:
        assert (line["application"], line["app"], line["deployment"], line["replica"]) == \
            ("app1", "app1", "app1_Model", "abcd1234")
    # ...and the lines logged during the request carry its id and route
    assert "request_id" not in lines[0]
    assert lines[1]["message"] == "inside 1" and lines[1]["request_id"] == "req-42" and lines[1]["route"] == "/r"
    assert lines[1]["k"] == "v" and lines[2]["message"] == "own" and lines[2]["request_id"] == "req-42"


def test_text_lines_read_as_rays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _configure(tmp_path)
    token = _in_request("req-7")
    try:
        logging.getLogger("ray.serve").info("hello")
    finally:
        _serve_request_context.reset(token)  # type: ignore[arg-type]
    logging.getLogger("ray.serve").info("file only", extra={"log_to_stderr": False})
    text = path.read_text()
    assert "INFO " in text and " app1_Model abcd1234 req-7 -- hello" in text and "-- file only" in text
    err = capsys.readouterr().err
    assert "app1_Model abcd1234 req-7 -- hello" in err and "file only" not in err
    # As in Ray, the file's handler is a one-record buffer in front of the file
    assert logging.getLogger("ray.serve").handlers[1].target.baseFilename == str(path)  # type: ignore[attr-defined]


def test_log_level_applies_to_user_and_own_loggers(tmp_path: Path) -> None:
    path = _configure(tmp_path, log_level="WARNING")
    logging.getLogger("ray.serve").info("quiet")
    logging.getLogger("mqserve.replica").info("quiet too")
    logging.getLogger("ray.serve").warning("loud")
    text = path.read_text()
    assert "loud" in text and "quiet" not in text


@pytest.mark.parametrize("enabled", [True, False])
def test_access_log_lines_and_turning_them_off(tmp_path: Path, enabled: bool) -> None:
    # Given a replica's access log
    path = _configure(tmp_path, enable_access_log=enabled)
    access = AccessLog()
    request = _RequestContext("", "req-1", "internal", "app1", "", False)
    # When a call succeeds and another is cancelled
    ok: Future[bytes] = Future()
    access.watch_call("predict", request, 0.0, ok)
    ok.set_result(codec.encode_value(1))
    cancelled: Future[bytes] = Future()
    access.watch_call("predict", request, 0.0, cancelled)
    cancelled.set_result(codec.encode_error(RequestCancelledError("x")))
    # And user code logs with Ray's access-log marker
    logging.getLogger("ray.serve").info("marked", extra={"serve_access_log": True})
    access.close()  # its thread writes the lines still queued, then ends
    text = path.read_text()
    # Then each call has its line (Ray's words), unless access logs are off
    assert ("req-1 -- CALL predict OK " in text) is enabled
    assert ("CALL predict CANCELLED " in text) is enabled
    assert ("marked" in text) is enabled
    assert "serve_access_log" not in text


def test_http_route_is_the_matched_template_under_the_prefix() -> None:
    class Route:
        path = "/items/{item_id}"

    assert route_of({"root_path": "/api", "route": Route()}) == "/api/items/{item_id}"
    assert route_of({"root_path": "", "route": Route()}) == "/items/{item_id}"
    assert route_of({"root_path": "/api"}) == "/api"
    assert route_of({}) == "/"


def test_file_names_keep_only_posix_characters() -> None:
    assert logs.ReplicaIdentity("my app", "Mödel/1", "ab12").file_name == "replica_my_app_M_del_1_ab12.log"


def test_an_unwritable_logs_dir_leaves_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert logs.configure(LoggingConfig(logs_dir=str(blocker / "sub")), IDENTITY, "/x") is None
    logging.getLogger("ray.serve").warning("still here")
    assert "still here" in capsys.readouterr().err


def test_logging_config_validation_and_shapes() -> None:
    assert LoggingConfig.parse({"encoding": "JSON", "log_level": 10}) == LoggingConfig("JSON", "DEBUG")
    assert LoggingConfig.parse(None) is None
    with pytest.raises(ConfigError, match="Encoding must be one of"):
        LoggingConfig(encoding="XML")
    with pytest.raises(ConfigError, match="log_level must be one of"):
        LoggingConfig(log_level="LOUD")
    with pytest.raises(ConfigError, match="unknown logging_config field"):
        LoggingConfig.parse({"colour": True})
    with pytest.raises(ConfigError, match="Unknown attribute"):
        LoggingConfig(additional_log_standard_attrs=("nope",))
    # A deployment keeps it as plain fields (it travels as JSON)
    config = DeploymentConfig(logging_config=LoggingConfig(enable_access_log=False))
    assert config.logging_config is not None and config.logging_config["enable_access_log"] is False
    assert json.loads(config.to_json())["logging_config"]["encoding"] == "TEXT"
