"""Test fixtures: a real redis-server on a free port for the session, and serve instances.

Every process a test starts is stopped by the fixture that started it, also when the
test fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from actors import serve  # noqa: E402
from actors.runtime.local import find_redis_server  # noqa: E402
from broker import codec  # noqa: E402
from broker.connection import connect  # noqa: E402
from broker.keys import Keys  # noqa: E402
from broker.registry import Registry  # noqa: E402
from tests.cluster import LocalCluster, free_port, serve_in  # noqa: E402,F401 - free_port is imported by tests


@pytest.fixture(autouse=True)
def _no_secret_left_behind() -> Iterator[None]:
    """The secret a test gave this process (``codec.use_secret``, as a serve context does
    from MQSERVE_SECRET) is process state: the next test starts without it."""
    yield
    codec.use_secret(None)


@pytest.fixture(scope="session", autouse=True)
def _logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Replicas write their log files (MQSERVE_LOGS_DIR, inherited by every process the
    tests start) under the session's temporary directory, not the machine's default."""
    saved = os.environ.get("MQSERVE_LOGS_DIR")
    os.environ["MQSERVE_LOGS_DIR"] = str(tmp_path_factory.mktemp("replica-logs"))
    yield
    if saved is None:
        os.environ.pop("MQSERVE_LOGS_DIR", None)
    else:
        os.environ["MQSERVE_LOGS_DIR"] = saved


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server for the whole session (never the machine's own)."""
    port = free_port()
    proc = subprocess.Popen(
        [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--logfile", ""], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    for line in proc.stdout:
        if b"ready to accept connections" in line.lower():
            break
    else:
        pytest.fail("redis-server did not start")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def cluster(redis_url: str, namespace: str) -> Iterator[LocalCluster]:
    """One worker and one gateway (on ``MQSERVE_HTTP_PORT``) in the module's namespace."""
    os.environ["MQSERVE_NAMESPACE"] = namespace
    os.environ["MQSERVE_HTTP_PORT"] = str(free_port())
    local = LocalCluster(redis_url, namespace)
    try:
        local.add_worker(f"{namespace}-w1")
        local.add_gateway(int(os.environ["MQSERVE_HTTP_PORT"]))
        yield local
    finally:
        left = local.stop()
        os.environ.pop("MQSERVE_NAMESPACE", None)
        os.environ.pop("MQSERVE_HTTP_PORT", None)
        Registry(connect(redis_url), Keys(namespace)).clear_namespace()
        assert left == [], f"processes left behind: {left}"


@pytest.fixture(scope="module")
def serve_instance(cluster: LocalCluster, redis_url: str) -> Iterator[Registry]:
    """serve connected (cluster mode) to the module's cluster on the session Redis.

    Yields the namespace's registry, so tests can look at what is in Redis.
    """
    try:
        serve.start(redis_url=redis_url)
        yield cluster.registry
    finally:
        serve.shutdown()


def run_python(code: str, *, env: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a Python program in a fresh interpreter from the repository root."""
    base = {k: v for k, v in os.environ.items() if k != "MQSERVE_NAMESPACE"}
    full_env = {**base, "PYTHONPATH": ROOT, "MQSERVE_HTTP_PORT": str(free_port()), **(env or {})}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module", params=["local", "cluster"])
def mode(request, redis_url: str) -> Iterator[str]:
    """This module's serve, once in local mode (private Redis on a Unix socket, one node)
    and once in cluster mode (TCP Redis, a separate worker): its tests run in both."""
    prefix = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")[:4]
    with serve_in(request.param, redis_url, prefix=prefix) as mode:
        yield mode

