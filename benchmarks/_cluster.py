"""A cluster on this machine for the cluster benchmarks: a private ``redis-server`` on a
free TCP port, ``python -m actors.runtime.node`` workers (= ``mqserve worker``), and this
process as a cluster-mode driver (``serve.start(redis_url=...)``).

Every worker carries a namespace of its own in its command line, and its replicas
inherit it, so :meth:`BenchCluster.stop` can prove that nothing is left behind. Use it
as a context manager: whatever happens in the body (an error, Ctrl-C, SIGTERM), the
driver disconnects, the workers get SIGTERM (then SIGKILL), Redis stops, and the
namespace's keys go. Workers and Redis also get SIGTERM if this process is killed
(parent-death signal).

If ``MQSERVE_REDIS_URL`` is set, that Redis is used instead of a private one (the
namespace is still private and is deleted at the end).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

from _common import free_port, log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from actors.runtime.local import find_redis_server  # noqa: E402
from actors.runtime.procs import child_preexec, stop_all, stop_process  # noqa: E402
from broker.connection import connect  # noqa: E402
from broker.keys import Keys  # noqa: E402
from broker.registry import Registry  # noqa: E402
from tests.procs import processes_with  # noqa: E402


def poll(predicate: Callable[[], Any], timeout_s: float = 60.0, interval_s: float = 0.02,
         what: str = "condition") -> Any:
    """tests.cluster.poll, raising TimeoutError (the benchmarks' error) instead."""
    from tests.cluster import poll as test_poll

    try:
        return test_poll(predicate, timeout_s, interval_s, what)
    except AssertionError as e:
        raise TimeoutError(str(e)) from None


def replica_processes(namespace: str) -> list[int]:
    return [pid for pid in processes_with(namespace) if _cmdline_has(pid, b"actors.runtime.replica")]


def _cmdline_has(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return needle in f.read()
    except OSError:
        return False


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15)


class BenchCluster:
    """``with BenchCluster(workers=2) as c:`` -> Redis and 2 registered workers, and
    this process connected to them in cluster mode (``serve.run`` places replicas there)."""

    def __init__(self, workers: int = 2, *, max_replicas: int | None = None) -> None:
        self.n_workers = workers
        self.max_replicas = max_replicas
        self.namespace = f"mqbench-{uuid.uuid4().hex[:8]}"
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.url = os.environ.get("MQSERVE_REDIS_URL") or ""
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.registry: Registry | None = None
        self._old_sigterm: Any = None

    # Start ----------------------------------------------------------------------------------
    def __enter__(self) -> BenchCluster:
        self._old_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _start(self) -> None:
        if not self.url:
            self.url = self._start_redis()
        self.registry = Registry(connect(self.url), Keys(self.namespace))
        self.registry.ping()
        for i in range(self.n_workers):
            self.add_worker(f"{self.namespace}-w{i + 1}")
        # The controller lease is taken on a worker's first pass: wait for it, so that
        # the first deploy does not pay for the election.
        poll(lambda: self.registry.leader(), what="a worker to take the controller lease")
        # This process is the driver: cluster mode, in our namespace.
        os.environ["MQSERVE_NAMESPACE"] = self.namespace
        from actors import serve

        serve.start(redis_url=self.url)
        log.info("cluster up: %s, namespace %s, workers %s", self.url, self.namespace, list(self.workers))

    def _start_redis(self) -> str:
        port = free_port()
        self.redis_proc = subprocess.Popen(
            [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--logfile", "", "--daemonize", "no"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=child_preexec)
        assert self.redis_proc.stdout is not None
        for line in self.redis_proc.stdout:
            if b"ready to accept connections" in line.lower():
                break
        else:
            raise RuntimeError("redis-server exited before it was ready")
        self.redis_proc.stdout.close()  # --logfile "" : nothing more is written there
        return f"redis://127.0.0.1:{port}/0"

    def add_worker(self, name: str) -> None:
        env = {**os.environ, "MQSERVE_NAMESPACE": self.namespace}
        env.pop("MQSERVE_REDIS_URL", None)
        env["PYTHONPATH"] = ROOT
        cmd = [sys.executable, "-m", "actors.runtime.node", "--redis-url", self.url, "--namespace", self.namespace,
               "--name", name] + (["--max-replicas", str(self.max_replicas)] if self.max_replicas is not None else [])
        # From "/": the workers get the benchmark's code by cloudpickle, as on other machines.
        self.workers[name] = subprocess.Popen(cmd, env=env, cwd="/", stdin=subprocess.DEVNULL,
                                              preexec_fn=child_preexec)
        assert self.registry is not None
        poll(lambda: self._check_alive() and name in self.registry.nodes(), what=f"worker {name} to register")

    def _check_alive(self) -> bool:
        for name, proc in self.workers.items():
            if proc.poll() is not None:
                raise RuntimeError(f"worker {name} exited with status {proc.returncode}")
        return True

    @property
    def redis_kind(self) -> str:
        """For the result line: a private TCP redis-server, or the one MQSERVE_REDIS_URL names."""
        return "private tcp" if self.redis_proc is not None else "MQSERVE_REDIS_URL"

    # Inspect --------------------------------------------------------------------------------
    def placement(self, app: str, dep: str, state: str = "RUNNING") -> dict[str, int]:
        """Replicas of ``app/dep`` in ``state`` per worker (every worker listed, 0 if none)."""
        assert self.registry is not None
        out = {name: 0 for name in self.workers}
        for rec in self.registry.replicas(app, dep).values():
            if rec.get("state") == state:
                out[rec["node"]] = out.get(rec["node"], 0) + 1
        return out

    def running(self, app: str, dep: str) -> int:
        assert self.registry is not None
        return sum(1 for rec in self.registry.replicas(app, dep).values() if rec.get("state") == "RUNNING")

    def wait_idle(self, timeout_s: float = 60.0) -> None:
        """Until no replica process of ours runs (after a delete) and the CPU had a moment."""
        poll(lambda: not replica_processes(self.namespace), timeout_s=timeout_s, what="replicas to exit")

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each role: ``client`` (this
        process), ``redis`` (a private one only), ``workers`` and ``replicas``."""
        out = {"client": _cpu(os.getpid()), "redis": 0.0, "workers": 0.0, "replicas": 0.0}
        if self.redis_proc is not None:
            out["redis"] = _cpu(self.redis_proc.pid)
        out["workers"] = sum(_cpu(p.pid) for p in self.workers.values())
        out["replicas"] = sum(_cpu(pid) for pid in replica_processes(self.namespace))
        return out

    # Stop -----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Disconnect the driver (deleting its apps), SIGTERM then SIGKILL the workers, stop
        Redis, and check that no process of this namespace is left."""
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut this short
        log.info("stopping the cluster (namespace %s)", self.namespace)
        try:
            from actors import serve

            serve.shutdown()
        except Exception as e:  # Redis may be gone already
            log.warning("serve.shutdown failed: %s", e)
        stop_all(list(self.workers.values()))
        # Anything of ours still alive (a replica whose worker was killed): SIGKILL it.
        for pid in processes_with(self.namespace):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.workers.clear()
        if self.registry is not None and self.redis_proc is None:
            try:  # a shared Redis: leave nothing of ours in it
                self.registry.clear_namespace()
            except Exception as e:
                log.warning("could not clear namespace %s: %s", self.namespace, e)
        if self.redis_proc is not None:
            stop_process(self.redis_proc)
            self.redis_proc = None
        try:
            poll(lambda: not processes_with(self.namespace), timeout_s=10, what="our processes to exit")
        except TimeoutError:
            log.warning("processes left behind: %s", processes_with(self.namespace))
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None


def _raise_terminated(*_: Any) -> None:
    """SIGTERM: unwind through the ``finally`` blocks (and ``__exit__``), exit 143."""
    raise SystemExit(128 + signal.SIGTERM)
