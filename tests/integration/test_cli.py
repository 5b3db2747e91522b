"""`mqserve run`: an import path or a config file, Ctrl-C and SIGTERM, and its errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import httpx
import pytest

from tests.cluster import poll
from tests.conftest import ROOT, free_port
from tests.procs import kill_all, wait_until_gone


@pytest.fixture
def mqserve(tmp_path):
    """Start `mqserve run ...` (local mode, its own port and namespace); kills leftovers."""
    marker = f"mqcli{uuid.uuid4().hex[:8]}"
    port = free_port()
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], int]:
        env = {**os.environ, "PYTHONPATH": ROOT, "MQSERVE_NAMESPACE": marker}
        env.pop("MQSERVE_REDIS_URL", None)
        proc = subprocess.Popen([sys.executable, "-m", "actors.runtime.cli", "run", *args, "--port", str(port)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc, port

    yield start, marker
    kill_all(marker, procs)


def _wait_running(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if "press Ctrl-C" in line:
            return line
    raise AssertionError(f"mqserve run exited: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_run_import_path_serves_http_and_stops_on_signal(mqserve, sig) -> None:
    start, marker = mqserve
    proc, port = start("examples.hello:language_classifier")
    _wait_running(proc)
    r = httpx.post(f"http://127.0.0.1:{port}/", json={"language": "spanish", "name": "Dora"})
    assert r.text == "Hola Dora"
    proc.send_signal(sig)
    assert proc.wait(timeout=20) == 0
    assert wait_until_gone(marker) == []


def test_run_config_file_applies_overrides(mqserve, tmp_path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text(
        "applications:\n"
        "  - name: greet\n"
        "    route_prefix: /greet\n"
        "    import_path: tests.apps.greeter:app\n"
        "    deployments:\n"
        "      - name: Greeter\n"
        "        user_config: {greeting: Hola}\n"
        "  - name: hello\n"
        "    route_prefix: /\n"
        "    import_path: examples.hello:language_classifier\n")
    start, marker = mqserve
    proc, port = start(str(config))
    _wait_running(proc)
    assert httpx.get(f"http://127.0.0.1:{port}/greet?name=Ana").text == "Hola Ana"
    assert httpx.post(f"http://127.0.0.1:{port}/", json={"language": "french", "name": "Ana"}).text == "Bonjour Ana"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    assert wait_until_gone(marker) == []


def test_run_config_file_applies_logging_config(mqserve, tmp_path) -> None:
    # Given a config whose application logs JSON, with one deployment's own override
    app_logs, dep_logs = tmp_path / "app-logs", tmp_path / "dep-logs"
    config = tmp_path / "serve.yaml"
    config.write_text(
        "applications:\n"
        "  - name: greet\n"
        "    route_prefix: /greet\n"
        "    import_path: tests.apps.greeter:app\n"
        f"    logging_config: {{encoding: JSON, logs_dir: {app_logs}}}\n"
        "  - name: hello\n"
        "    route_prefix: /\n"
        "    import_path: examples.hello:language_classifier\n"
        f"    logging_config: {{encoding: JSON, logs_dir: {app_logs}}}\n"
        "    deployments:\n"
        "      - name: LanguageClassifer\n"  # (sic: the example's spelling)
        f"        logging_config: {{enable_access_log: false, logs_dir: {dep_logs}}}\n")
    start, marker = mqserve
    proc, port = start(str(config))
    _wait_running(proc)
    # When each application serves a request
    assert httpx.get(f"http://127.0.0.1:{port}/greet?name=Ana").text == "Hello Ana"
    assert httpx.post(f"http://127.0.0.1:{port}/", json={"language": "french", "name": "Ana"}).text == "Bonjour Ana"
    # Then the app's config applies where the deployment sets none (JSON access lines),
    # and the deployment's own where it does (its directory, TEXT, no access lines)
    greeter = next(app_logs.glob("replica_greet_Greeter_*.log"))
    poll(lambda: '"message": "GET /greet 200 ' in greeter.read_text(), timeout_s=10, what="a JSON access line")
    classifier = next(dep_logs.glob("replica_hello_LanguageClassifer_*.log")).read_text()
    assert "hello_LanguageClassifer" in classifier and "GET / " not in classifier and "{" not in classifier
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    assert wait_until_gone(marker) == []


def test_run_config_file_http_options_set_the_request_timeout(mqserve, tmp_path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text(
        "http_options:\n"
        "  request_timeout_s: 1\n"
        "applications:\n"
        "  - name: sleeper\n"
        "    route_prefix: /sleep\n"
        "    import_path: tests.apps.sleeper:app\n")
    start, marker = mqserve
    proc, port = start(str(config))
    _wait_running(proc)
    r = httpx.get(f"http://127.0.0.1:{port}/sleep?s=30", timeout=20)
    assert r.status_code == 408 and r.text.endswith("timed out after 1.0s."), r.text
    assert httpx.get(f"http://127.0.0.1:{port}/sleep?s=0", timeout=20).text == "awake"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    assert wait_until_gone(marker) == []


@pytest.mark.parametrize("target, expected", [
    ("tests.apps.missing:app", "Could not import 'tests.apps.missing'"),
    ("tests.apps.greeter:nothing", "has no attribute 'nothing'"),
    ("tests.apps.greeter:not_an_app", "is a int, not an application"),
    ("tests.apps.greeter:broken", "ValueError: cannot load the model"),
    ("no-colon", "not an import path"),
])
def test_run_errors_are_one_paragraph(mqserve, target: str, expected: str) -> None:
    start, marker = mqserve
    proc, _ = start(target)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    message = [line for line in err.splitlines() if line.startswith("mqserve:")]
    assert len(message) == 1 and expected in message[0], err
    assert "Traceback" not in err
    if target.endswith(":broken"):
        assert "greeter.py, line" in message[0]
    assert wait_until_gone(marker) == []
