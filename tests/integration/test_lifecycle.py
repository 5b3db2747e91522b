"""What happens to the processes: shutdown, driver exit, Ctrl-C, SIGKILL of the driver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest

from tests.conftest import ROOT, free_port
from tests.procs import kill_all, processes_with, wait_until_gone

DRIVER = textwrap.dedent("""
    import sys, time
    from actors import serve

    @serve.deployment(num_replicas=2)
    class Echo:
        def __call__(self, x):
            return x

    handle = serve.run(Echo.bind())
    assert handle.remote(7).result() == 7
    print("READY", flush=True)
    mode = sys.argv[1]
    if mode == "shutdown":
        serve.shutdown()
        print("DOWN", flush=True)
        time.sleep(60)
    elif mode == "wait":
        time.sleep(60)
""")


@pytest.fixture
def driver(tmp_path):
    """Start a driver program in local mode; yields (start, marker); kills leftovers."""
    marker = f"mqlc{uuid.uuid4().hex[:8]}"
    tmpdir = os.path.join(str(tmp_path), marker)
    os.makedirs(tmpdir)
    procs: list[subprocess.Popen[str]] = []

    def start(mode: str) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": ROOT, "TMPDIR": tmpdir, "MQSERVE_NAMESPACE": marker,
               "MQSERVE_HTTP_PORT": str(free_port())}
        env.pop("MQSERVE_REDIS_URL", None)
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, mode], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        # Given a running app: Redis, a node and two replicas carry the marker
        assert len(processes_with(marker)) >= 4
        return proc

    yield start, marker
    kill_all(marker, procs)


def test_shutdown_stops_everything_while_driver_lives(driver):
    start, marker = driver
    proc = start("shutdown")
    assert proc.stdout.readline().strip() == "DOWN"
    assert wait_until_gone(marker) == []
    assert proc.poll() is None  # the driver itself is still running


def test_driver_exit_stops_everything(driver):
    start, marker = driver
    proc = start("exit")
    assert proc.wait(timeout=60) == 0
    assert wait_until_gone(marker) == []


def test_ctrl_c_stops_everything(driver):
    start, marker = driver
    proc = start("wait")
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert wait_until_gone(marker) == []


def test_killed_driver_leaves_nothing(driver):
    start, marker = driver
    proc = start("wait")
    proc.kill()
    proc.wait()
    assert wait_until_gone(marker) == []
