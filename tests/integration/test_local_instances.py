"""Operator commands find a local instance with no --redis-url (issue 14, part 3), as
`serve status` finds a local Ray: `mqserve run` and a driver's local serve.start write a
record into the runtime directory (MQSERVE_RUNTIME_DIR here, one per test), remove it as
they stop, and `mqserve status`/`queue` in another process read it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

from actors import serve
from actors.runtime import instances
from tests.cluster import free_port, serve_in
from tests.conftest import ROOT
from tests.procs import kill_all, wait_until_gone


@pytest.fixture
def runtime_dir(tmp_path, monkeypatch) -> str:
    path = str(tmp_path / "runtime")
    monkeypatch.setenv("MQSERVE_RUNTIME_DIR", path)
    monkeypatch.delenv("MQSERVE_REDIS_URL", raising=False)
    return path


def _env(runtime_dir: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MQSERVE_REDIS_URL", "MQSERVE_NAMESPACE")}
    return {**env, "PYTHONPATH": ROOT, "MQSERVE_RUNTIME_DIR": runtime_dir, **extra}


@pytest.fixture
def mqserve_run(runtime_dir):
    """Start `mqserve run tests.apps.greeter:app` processes (local mode, own namespace and
    port); each is stopped, and nothing is left, at the end."""
    procs: list[subprocess.Popen[str]] = []
    markers: list[str] = []

    def start() -> subprocess.Popen[str]:
        marker = f"mqinst{uuid.uuid4().hex[:8]}"
        proc = subprocess.Popen([sys.executable, "-m", "actors.runtime.cli", "run", "tests.apps.greeter:app",
                                 "--port", str(free_port())], cwd=ROOT,
                                env=_env(runtime_dir, MQSERVE_NAMESPACE=marker),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        markers.append(marker)
        assert proc.stdout is not None
        for line in proc.stdout:
            if "press Ctrl-C" in line:
                return proc
        raise AssertionError(f"mqserve run exited: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}")

    yield start
    for proc, marker in zip(procs, markers):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        kill_all(marker, [proc])


def _mqserve(runtime_dir: str, *args: str) -> subprocess.CompletedProcess[str]:
    """An operator command in a process of its own, with no Redis named and no terminal."""
    return subprocess.run([sys.executable, "-m", "actors.runtime.cli", *args], cwd=ROOT, env=_env(runtime_dir),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def test_status_and_queue_find_a_running_mqserve_run(mqserve_run, runtime_dir) -> None:
    # Nothing runs yet: the command says how to name a Redis
    none = _mqserve(runtime_dir, "status")
    assert none.returncode == 1 and "no local mqserve instance is running" in none.stderr
    assert "--redis-url" in none.stderr

    proc = mqserve_run()
    status = _mqserve(runtime_dir, "status", "--json")
    assert status.returncode == 0, status.stderr
    apps = json.loads(status.stdout)["applications"]
    assert apps["default"]["status"] == "RUNNING" and "Greeter" in apps["default"]["deployments"]
    queue = _mqserve(runtime_dir, "queue", "--json")
    assert queue.returncode == 0, queue.stderr
    assert [(d["app"], d["deployment"], d["queued"]) for d in json.loads(queue.stdout)["deployments"]] == \
        [("default", "Greeter", 0)]
    [record] = instances.live()
    assert record.pid == proc.pid and record.started_by.startswith("mqserve run tests.apps.greeter:app")
    assert oct(os.stat(runtime_dir).st_mode & 0o777) == "0o700"

    # Stopped: its record is gone with it
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    assert os.listdir(runtime_dir) == []


def test_several_instances_are_listed_and_a_terminalless_command_refuses(mqserve_run, runtime_dir) -> None:
    first, second = mqserve_run(), mqserve_run()
    for command in (["status"], ["queue", "--json"], ["shutdown"]):
        proc = _mqserve(runtime_dir, *command)
        assert proc.returncode == 1, proc.stdout
        assert "2 local mqserve instances are running" in proc.stderr and "--redis-url" in proc.stderr
        assert f"pid {first.pid}," in proc.stderr and f"pid {second.pid}," in proc.stderr
    # Nothing was shut down: both still serve
    assert first.poll() is None and second.poll() is None
    assert len(instances.live()) == 2
    # Asked on a terminal, the user picks one
    assert instances.find(interactive=True, ask=lambda q: "2").pid == second.pid


def test_a_driver_in_local_mode_is_found_and_its_stale_record_ignored(runtime_dir) -> None:
    with serve_in("local", "", prefix="mqdrv"):
        @serve.deployment
        def echo(x: int) -> int:
            return x

        serve.run(echo.bind(), name="drv")
        [record] = instances.live()
        assert record.pid == os.getpid() and record.namespace == os.environ["MQSERVE_NAMESPACE"]
        queue = _mqserve(runtime_dir, "queue", "--json")
        assert queue.returncode == 0, queue.stderr
        assert [d["app"] for d in json.loads(queue.stdout)["deployments"]] == ["drv"]
        # A record left by a process that died (nothing removed it) is ignored, and removed
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        stale = os.path.join(runtime_dir, f"{dead.pid}-stale.json")
        with open(stale, "w") as f:
            json.dump({**record.to_dict(), "pid": dead.pid}, f)
        assert [i.pid for i in instances.live()] == [os.getpid()] and not os.path.exists(stale)
    assert os.listdir(runtime_dir) == []
    assert wait_until_gone("mqdrv") == []
