"""A cluster on one machine for tests: ``mqserve worker`` and ``mqserve gateway`` processes
sharing the session's Redis under a namespace of their own.

Every process carries the namespace in its command line (replicas inherit it from
their worker), so :meth:`LocalCluster.stop` can prove that nothing is left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from actors import serve
from actors.runtime.procs import stop_all, stop_process
from broker.connection import connect
from broker.keys import Keys
from broker.registry import Registry

from .procs import kill_all, wait_until_gone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def poll(predicate, timeout_s: float = 30.0, interval_s: float = 0.05, what: str = "condition"):
    """Call ``predicate`` until it returns something truthy; fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class LocalCluster:
    """Workers and gateways as real processes; stop() kills whatever is left."""

    def __init__(self, redis_url: str, namespace: str) -> None:
        self.redis_url, self.namespace = redis_url, namespace
        self.registry = Registry(connect(redis_url), Keys(namespace))
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.gateways: dict[int, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "PYTHONPATH": ROOT, "MQSERVE_NAMESPACE": namespace}
        self.env.pop("MQSERVE_REDIS_URL", None)

    def add_worker(self, name: str, *, max_replicas: int | None = None, wait: bool = True,
                   cwd: str = "/") -> subprocess.Popen[bytes]:
        """Start a worker from a directory where the tests' modules cannot be imported."""
        env = {k: v for k, v in self.env.items() if k != "PYTHONPATH"}
        cmd = [sys.executable, "-m", "actors.runtime.node", "--redis-url", self.redis_url,
               "--namespace", self.namespace, "--name", name]
        if max_replicas is not None:
            cmd += ["--max-replicas", str(max_replicas)]
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL)
        self.workers[name] = proc
        if wait:
            poll(lambda: name in self.registry.nodes(), what=f"worker {name} to register")
        return proc

    def add_gateway(self, port: int, *, wait: bool = True, env: dict[str, str] | None = None
                    ) -> subprocess.Popen[bytes]:
        """A gateway on ``port``; ``env`` adds settings (MQSERVE_MAX_BODY_BYTES...)."""
        cmd = [sys.executable, "-m", "gateway", "--redis-url", self.redis_url, "--namespace", self.namespace,
               "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(cmd, env={**self.env, **(env or {})}, cwd=ROOT, stdin=subprocess.DEVNULL)
        self.gateways[port] = proc
        if wait:
            poll(lambda: _healthy(port, proc), what=f"gateway on port {port}")
        return proc

    def stop_gateway(self, port: int) -> None:
        stop_process(self.gateways.pop(port))

    def kill_worker(self, name: str) -> None:
        """kill -9: the worker's replicas die with it (they have a parent-death signal)."""
        proc = self.workers.pop(name)
        proc.kill()
        proc.wait()

    def stop_worker(self, name: str, timeout_s: float = 30.0) -> None:
        proc = self.workers.pop(name)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout_s)

    def replicas_by_worker(self, app: str, dep: str, state: str = "RUNNING") -> dict[str, int]:
        out: dict[str, int] = {}
        for rec in self.registry.replicas(app, dep).values():
            if rec.get("state") == state:
                out[rec["node"]] = out.get(rec["node"], 0) + 1
        return out

    def namespace_keys(self) -> set[bytes]:
        """The namespace's keys but the dashboard's (see :func:`dashboard_key`)."""
        return {k for k in self.registry.redis.scan_iter(match=f"{self.namespace}:*", count=1000)
                if not dashboard_key(k)}

    def stop(self) -> list[int]:
        """Stop everything (TERM, then KILL) and return the pids still alive (none)."""
        procs = list(self.workers.values()) + list(self.gateways.values())
        stop_all(procs)
        kill_all(self.namespace, procs)
        self.workers.clear()
        self.gateways.clear()
        return wait_until_gone(self.namespace, timeout_s=10)


def dashboard_key(key: bytes) -> bool:
    """A key of the dashboard's figures (``broker.stats``): a few per deployment, bounded
    in size, written once a second after requests, so they may appear after a test took
    its picture of the idle keys; they are not kept per request."""
    return b":stats:" in key or b":totals:" in key or key.endswith(b":errors")


def _healthy(port: int, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"gateway on port {port} exited with status {proc.returncode}")
    try:
        # Up: healthy, or not ready for traffic only because no application has a route yet.
        r = httpx.get(f"http://127.0.0.1:{port}/-/healthz", timeout=1)
        return r.status_code == 200 or (r.status_code, r.text) == (503, "Route table is not populated yet.")
    except httpx.HTTPError:
        return False


@contextmanager
def cluster_on(url: str, *, workers: int = 1, gateway: bool = False, prefix: str = "c",
               **env: str) -> Iterator[tuple[LocalCluster, int]]:
    """A cluster on ``url`` in a namespace of its own, with this process's serve connected
    to it (cluster mode); ``env`` (MQSERVE_* settings) applies to every process. Yields
    the cluster and its gateway's port (if ``gateway``). Everything stops on exit, and
    the namespace is cleared."""
    namespace = f"{prefix}{uuid.uuid4().hex[:8]}"
    saved = dict(os.environ)
    os.environ.update(MQSERVE_NAMESPACE=namespace, **env)
    local = LocalCluster(url, namespace)
    port = free_port()
    try:
        for i in range(workers):
            local.add_worker(f"w{i}")
        if gateway:
            local.add_gateway(port)
        serve.start(redis_url=url)
        yield local, port
    finally:
        serve.shutdown()
        left = local.stop()
        try:
            local.registry.clear_namespace()
        except Exception:  # a test may have stopped its Redis
            pass
        os.environ.clear()
        os.environ.update(saved)
        assert left == [], f"processes left behind: {left}"


@contextmanager
def serve_in(mode: str, redis_url: str, *, prefix: str) -> Iterator[str]:
    """This process's serve in ``mode``: "local" (private Redis on a Unix socket, one
    node, started by serve) or "cluster" (:func:`cluster_on` ``redis_url``: TCP Redis, a
    separate worker). Yields ``mode``; everything stops on exit, and nothing is left."""
    if mode == "cluster":
        with cluster_on(redis_url, prefix=prefix):
            yield mode
        return
    marker = f"{prefix}{uuid.uuid4().hex[:8]}"
    saved = dict(os.environ)
    os.environ["MQSERVE_NAMESPACE"] = marker
    os.environ.pop("MQSERVE_REDIS_URL", None)
    os.environ["MQSERVE_HTTP_PORT"] = str(free_port())
    try:
        serve.start()
        yield mode
    finally:
        serve.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        assert wait_until_gone(marker) == [], "processes left behind"


def current_registry() -> Registry:
    """The registry of this process's serve (started by :func:`serve_in`), whatever its mode."""
    from actors.runtime.context import current_context

    ctx = current_context()
    assert ctx is not None, "serve is not started"
    return ctx.registry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settle_keys(cluster: LocalCluster, idle: set[bytes], timeout_s: float = 40) -> None:
    """Poll until the namespace holds no key beyond ``idle`` (what it held at rest)."""
    try:
        poll(lambda: not (cluster.namespace_keys() - idle), timeout_s=timeout_s, what="keys to return to idle")
    except AssertionError:
        extra = sorted(cluster.namespace_keys() - idle)
        ttls = {k: cluster.registry.redis.pttl(k) for k in extra[:10]}
        raise AssertionError(f"{len(extra)} keys beyond idle: {ttls}") from None
