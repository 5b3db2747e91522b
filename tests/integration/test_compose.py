"""docker-compose.yml, run without Docker: its very commands as local processes.

The gateway, two workers (``--scale worker=2``) and the one-shot deploy service run the
``command`` and ``environment`` written in docker-compose.yml, with three substitutions
only: the ``redis`` service's address becomes the session's redis-server, the gateway's
``0.0.0.0:8000`` becomes 127.0.0.1 on a free port, and ``mqserve`` becomes this
interpreter running ``actors.runtime.cli``. A broken command, module path or Redis URL in the
compose file fails this test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from broker.connection import connect
from broker.keys import Keys
from broker.registry import Registry
from tests.conftest import ROOT, free_port
from tests.procs import kill_all, processes_with, wait_until_gone

COMPOSE_FILE = os.path.join(ROOT, "docker-compose.yml")
DOCKERFILE = os.path.join(ROOT, "Dockerfile")
CONTAINER_PORT = "8000"
WORKERS = 2  # like `docker compose up --scale worker=2`
DEPLOY_TIMEOUT_S = 60.0
DEFAULT_STOP_GRACE_S = 10.0  # docker's default before it sends SIGKILL


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with open(COMPOSE_FILE) as f:
        return yaml.safe_load(f)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the ["KEY=value", ...] form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):  # the short form means service_started
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _seconds(duration: str | None, default: float) -> float:
    if not duration:
        return default
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration))
    assert parts and "".join(n + u for n, u in parts) == str(duration), f"bad duration {duration!r}"
    return sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


def _start_order(services: dict[str, Any], names: list[str]) -> list[str]:
    """``names`` in an order that honours depends_on (what compose does)."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"depends_on cycle: {' -> '.join(path + (name,))}"
        if name in order or name not in names:
            return
        for dep in _depends_on(services[name]):
            assert dep in services, f"{name} depends on unknown service {dep}"
            visit(dep, path + (name,))
        order.append(name)

    for name in names:
        visit(name, ())
    return order


class ComposeRun:
    """Local processes standing in for the compose services; every one carries ``marker``."""

    def __init__(self, compose: dict[str, Any], redis_url: str, tmp_path: Any) -> None:
        self.services = compose["services"]
        self.redis_netloc = urlparse(redis_url).netloc
        self.marker = f"compose-{uuid.uuid4().hex[:10]}"
        self.http_port = free_port()
        self.tmp_path = tmp_path
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def argv(self, name: str) -> list[str]:
        command = self.services[name].get("command")
        assert isinstance(command, list), f"{name}: command must be in exec (list) form, got {command!r}"
        assert command[0] == "mqserve", f"{name}: command must run mqserve, got {command!r}"
        args = [str(a) for a in command[1:]]
        if name == "gateway":
            assert args[args.index("--host") + 1] == "0.0.0.0", "the gateway must listen on all interfaces"
            assert args[args.index("--port") + 1] == CONTAINER_PORT
            args[args.index("--host") + 1] = "127.0.0.1"
            args[args.index("--port") + 1] = str(self.http_port)
        # -X puts the marker on the command line (where tests.procs looks) without
        # changing the program; the replicas a worker starts carry it as --namespace.
        return [sys.executable, "-X", f"mqserve_test={self.marker}", "-m", "actors.runtime.cli", *args]

    def env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MQSERVE_")}
        service_env = _environment(self.services[name])
        url = service_env.get("MQSERVE_REDIS_URL", "")
        host, port = urlparse(url).hostname, urlparse(url).port or 6379
        assert host in self.services and str(self.services[host].get("image", "")).startswith("redis"), \
            f"{name}: MQSERVE_REDIS_URL={url!r} does not name the compose file's redis service"
        redis_cmd = [str(a) for a in self.services[host].get("command") or []]
        redis_port = int(redis_cmd[redis_cmd.index("--port") + 1]) if "--port" in redis_cmd else 6379
        assert port == redis_port, f"{name}: MQSERVE_REDIS_URL={url!r}, but Redis listens on {redis_port}"
        for key, value in service_env.items():
            env[key] = re.sub(r"^(rediss?)://[^/]+", rf"\1://{self.redis_netloc}", value) \
                if key == "MQSERVE_REDIS_URL" else value
        env.update(PYTHONPATH=ROOT, MQSERVE_NAMESPACE=self.marker,
                   MQSERVE_HTTP_PORT=str(free_port()))  # nothing here may take the machine's port 8000
        return env

    def start(self, name: str, label: str) -> subprocess.Popen[bytes]:
        log = open(os.path.join(str(self.tmp_path), f"{label}.log"), "wb")
        proc = subprocess.Popen(self.argv(name), cwd=ROOT, env=self.env(name), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[label] = proc
        return proc

    def logs(self) -> str:
        out = []
        for label in self.procs:
            with open(os.path.join(str(self.tmp_path), f"{label}.log"), "rb") as f:
                out.append(f"--- {label} ---\n{f.read().decode(errors='replace')[-3000:]}")
        return "\n".join(out)

    def stop(self) -> dict[str, int | None]:
        """SIGTERM everything (``docker compose down``), wait each service's grace period."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for label, proc in self.procs.items():
            grace = _seconds(self.services[label.split("-")[0]].get("stop_grace_period"), DEFAULT_STOP_GRACE_S)
            try:
                codes[label] = proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                codes[label] = None
        return codes


@pytest.fixture
def compose_run(compose: dict[str, Any], redis_url: str, tmp_path: Any) -> Iterator[ComposeRun]:
    run = ComposeRun(compose, redis_url, tmp_path)
    try:
        yield run
    finally:
        run.stop()
        kill_all(run.marker, run.procs.values())
        Registry(connect(redis_url), Keys(run.marker)).clear_namespace()


def test_compose_file_shape(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"redis", "gateway", "worker", "deploy"}

    # Redis keeps its data: append-only file on a named volume mounted at /data
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    assert redis["command"][:1] == ["redis-server"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    mounts = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in redis.get("volumes", [])]
    data = [m for m in mounts if m.split(":")[1] == "/data"]
    assert data and data[0].split(":")[0] in (compose.get("volumes") or {}), "/data must be a named volume"
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]

    # The gateway publishes port 8000, the others wait for a healthy Redis
    assert services["gateway"]["ports"] == [f"{CONTAINER_PORT}:{CONTAINER_PORT}"]
    for name in ("gateway", "worker", "deploy"):
        assert _depends_on(services[name]).get("redis") == "service_healthy", name
        assert services[name].get("build") and services[name].get("image") == services["gateway"].get("image")

    # Workers scale: nothing that would clash between copies
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]

    # deploy runs once, after the worker and gateway start, and is retried if it fails
    assert services["deploy"]["restart"] == "on-failure"
    assert _depends_on(services["deploy"]).items() >= {"worker": "service_started",
                                                        "gateway": "service_started"}.items()


def test_dockerfile_shape() -> None:
    with open(DOCKERFILE) as f:
        lines = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert "WORKDIR /app" in lines
    assert any(line.startswith("RUN pip install --no-cache-dir .") for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert lines[-1] == 'CMD ["mqserve", "worker"]'
    # examples/ must be in the image: `mqserve deploy examples.hello:...` imports from WORKDIR
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        ignored = {line.strip().strip("/") for line in f if line.strip()}
    assert "examples" not in ignored and ".git" in ignored


def test_compose_services_serve_language_classifier(compose_run: ComposeRun) -> None:
    run = compose_run
    # Given the compose services started in depends_on order, with worker scaled to 2
    for name in _start_order(run.services, ["gateway", "worker", "deploy"]):
        for i in range(WORKERS if name == "worker" else 1):
            run.start(name, f"{name}-{i}")

    # When the one-shot deploy service has run, it exits 0
    deploy = run.procs["deploy-0"]
    try:
        code = deploy.wait(timeout=DEPLOY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        code = None
    assert code == 0, f"deploy exited with {code}\n{run.logs()}"
    for label, proc in run.procs.items():
        if label != "deploy-0":
            assert proc.poll() is None, f"{label} exited with {proc.returncode}\n{run.logs()}"

    # Then the gateway answers the Ray Serve document's request
    url = f"http://127.0.0.1:{run.http_port}/"
    deadline = time.monotonic() + 15
    while True:
        try:
            r = httpx.post(url, json={"language": "spanish", "name": "Dora"}, timeout=10)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)
    assert (r.status_code, r.text) == (200, "Hola Dora"), run.logs()
    assert httpx.post(url, json={"language": "french", "name": "Dora"}, timeout=10).text == "Bonjour Dora"

    # And the replicas run under the workers, not under the deploy process that is gone
    assert len(processes_with(run.marker)) > WORKERS + 1

    # And `docker compose down` (SIGTERM, then SIGKILL after the grace period) is clean:
    # every service exits by itself within its grace period (uvicorn, once it has shut
    # down gracefully, re-raises the SIGTERM it caught, hence -SIGTERM for the gateway)
    codes = run.stop()
    assert all(code in (0, -signal.SIGTERM) for code in codes.values()), f"{codes}\n{run.logs()}"
    assert wait_until_gone(run.marker) == []
