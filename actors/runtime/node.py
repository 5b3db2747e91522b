"""The node process: starts and stops the replica processes assigned to it.

``mqserve worker`` runs one (or several) per machine in cluster mode; in local mode
``serve.run`` starts one for the driver. A node also runs a controller thread that
competes for the controller lease (see :mod:`actors.runtime.controller`). Its main loop
heartbeats, then blocks on its wake-up list in Redis, and reconciles whenever an
assignment changes or a child process exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import redis

from broker import codec
from broker.connection import connect, redact
from broker.keys import Keys
from broker.registry import Registry

from ..config import DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S, Settings
from ..exceptions import ReplicaDiedError
from .controller import MEMBER_TTL_MS, ControllerLoop
from .procs import child_preexec, on_stdin_eof, setup_logging

logger = logging.getLogger("mqserve.node")

#: Seconds a node blocks on its wake-up list before a heartbeat pass.
HEARTBEAT_S = 1.0
#: Seconds added to a replica's graceful shutdown timeout before it is killed.
KILL_GRACE_S = 5.0


def kill_after_s(assignment: dict[str, Any]) -> float:
    """How long a replica may take to stop once told to: its deployment's
    ``graceful_shutdown_timeout_s`` (carried by its assignment), plus :data:`KILL_GRACE_S`."""
    timeout = assignment.get("graceful_shutdown_timeout_s", DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S)
    return float(timeout) + KILL_GRACE_S


class Node:
    """Owns replica processes; one per ``mqserve worker`` (or local ``serve.run``)."""

    def __init__(self, *, url: str, namespace: str, node_id: str, result_ttl_ms: int,
                 max_replicas: int | None = None) -> None:
        self.url, self.keys, self.node_id = url, Keys(namespace), node_id
        self.result_ttl_ms = result_ttl_ms
        self.max_replicas = max_replicas
        self.registry = Registry(connect(url), self.keys)
        self.controller = ControllerLoop(url, namespace, node_id, result_ttl_ms=result_ttl_ms)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.meta: dict[str, dict[str, Any]] = {}
        #: Replicas told to stop, and when (``time.monotonic()``) to kill them if still running.
        self.stopping: dict[str, float] = {}
        self.stop = threading.Event()

    def request_stop(self) -> None:
        """Safe from signal handlers and other threads: wakes the main loop."""
        self.stop.set()
        threading.Thread(target=self._wake, daemon=True).start()

    def _wake(self) -> None:
        try:
            Registry(connect(self.url), self.keys).wake_node(self.node_id)
        except Exception:
            pass

    def run(self) -> None:
        reg = self.registry
        logger.info("node %s serving namespace %s on %s", self.node_id, self.keys.ns, redact(self.url))
        self.controller.start()
        record = {"host": socket.gethostname(), "pid": os.getpid(), "max_replicas": self.max_replicas}
        run_id: str | None = None
        while not self.stop.is_set():
            try:
                lost, run_id = reg.data_lost(run_id)
                if lost:  # Redis restarted empty: say again which replicas run here, first
                    logger.warning("Redis lost its data; node %s restores its %d assignment(s)",
                                   self.node_id, len(self.procs))
                    for rid, rec in self.meta.items():
                        if rid not in self.stopping:
                            reg.assign(self.node_id, rid, rec)
                reg.register_node(self.node_id, {**record, "replicas": len(self.procs)}, MEMBER_TTL_MS)
                self.reconcile()
                reg.wait_wake([self.keys.node_wake(self.node_id)], HEARTBEAT_S)
            except redis.RedisError as e:  # Redis restarting: keep our replicas, retry
                if not self.stop.is_set():
                    logger.warning("node %s lost Redis (%s); retrying", self.node_id, e)
                    self.stop.wait(HEARTBEAT_S)
        self.controller.stop()
        self.shutdown()

    def reconcile(self) -> None:
        for rid in [r for r, p in self.procs.items() if p.poll() is not None]:
            self._reap(rid)
        assigned = self.registry.assignments(self.node_id)
        for rid, rec in assigned.items():
            if rid not in self.procs:
                self._spawn(rid, rec)
        now = time.monotonic()
        for rid, proc in self.procs.items():
            if rid not in assigned and rid not in self.stopping:
                proc.terminate()
                self.stopping[rid] = now + kill_after_s(self.meta[rid])
            elif rid in self.stopping and now > self.stopping[rid]:
                proc.kill()

    def _spawn(self, rid: str, rec: dict[str, Any]) -> None:
        cmd = [sys.executable, "-m", "actors.runtime.replica", "--namespace", self.keys.ns,
               "--app", rec["app"], "--deployment", rec["deployment"], "--replica-id", rid,
               "--version", rec["version"], "--node-id", self.node_id,
               "--result-ttl-ms", str(self.result_ttl_ms)]
        env = {**os.environ, "MQSERVE_REDIS_URL": self.url}  # not in argv: it may hold a password
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, env=env, preexec_fn=child_preexec)
        self.procs[rid], self.meta[rid] = proc, rec
        threading.Thread(target=self._await_exit, args=(proc,), daemon=True).start()

    def _await_exit(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        if not self.stop.is_set():
            self._wake()

    def _reap(self, rid: str) -> None:
        proc, rec = self.procs.pop(rid), self.meta.pop(rid)
        self.stopping.pop(rid, None)
        app, dep = rec["app"], rec["deployment"]
        record = self.registry.replicas(app, dep).get(rid, {})
        if record.get("state") == "DEPLOY_FAILED":
            self.registry.unassign(self.node_id, rid)  # keep the record: it says why
            self.registry.leave_routing(app, dep, rid)  # models its constructor loaded
            return
        if proc.returncode not in (0, -signal.SIGTERM):
            logger.warning("replica %s exited with status %s", rid, proc.returncode)
        # Requests it took and never answered are retried elsewhere if the deployment's
        # max_request_retries allows, else fail now instead of hanging (by default not
        # retried: they may have had effects; as in Ray, the caller decides).
        retried, lost = self.registry.recover_processing(
            rid, app, dep, self.result_ttl_ms,
            ReplicaDiedError(f"The replica of deployment '{dep}' running this request died "
                             f"(exit status {proc.returncode}) before answering. Set max_request_retries "
                             "on the deployment to run such requests again on another replica."))
        if retried or lost:
            logger.warning("replica %s died with %d request(s) unanswered: %d queued again, %d failed",
                           rid, retried + lost, retried, lost)
        self.registry.unassign(self.node_id, rid)
        if record.get("state") != "UNHEALTHY":  # kept until replaced: the deployment shows UNHEALTHY
            self.registry.remove_replica(app, dep, rid)

    def shutdown(self) -> None:
        """Leave the cluster first, so the controller starts our replicas elsewhere while
        these finish their running requests; then stop them."""
        try:
            self.registry.remove_node(self.node_id)
        except Exception as e:  # Redis may already be gone in local mode
            logger.info("node %s could not remove its record: %s", self.node_id, e)
        now = time.monotonic()
        for rid, proc in self.procs.items():
            if proc.poll() is None and rid not in self.stopping:
                proc.terminate()
                self.stopping[rid] = now + kill_after_s(self.meta[rid])
        for rid, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, self.stopping.get(rid, now) - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        try:
            for rid in list(self.procs):
                self._reap(rid)
        except Exception as e:
            logger.info("node %s could not clean its records: %s", self.node_id, e)


def _permanent_connection_problem(url: str) -> str | None:
    """A wrong password or certificate will not fix itself: say so and stop. A Redis that
    is not up yet (or restarting) may be, so the node waits for it."""
    try:
        Registry(connect(url), Keys("probe")).ping()
    except redis.AuthenticationError as e:
        return f"{e} (check the user and password in the URL)"
    except redis.ConnectionError as e:
        text = str(e)
        if "CERTIFICATE" in text or "SSL" in text or "NOAUTH" in text or "HELLO" in text:
            return f"{text} (check the TLS options and credentials in the URL)"
    except redis.RedisError:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    codec.use_secret(settings.secret)
    parser = argparse.ArgumentParser(prog="python -m actors.runtime.node")
    parser.add_argument("--redis-url", default=settings.redis_url, required=settings.redis_url is None)
    parser.add_argument("--namespace", default=settings.namespace)
    parser.add_argument("--name", default=None, help="node id (default: host name and a random suffix)")
    parser.add_argument("--max-replicas", type=int, default=None,
                        help="most replicas this node hosts (default: no limit)")
    parser.add_argument("--watch-stdin", action="store_true", help="stop when stdin closes (local mode)")
    opts = parser.parse_args(argv)
    setup_logging(settings.log_level, "node")
    node_id = opts.name or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    if opts.max_replicas is not None and opts.max_replicas < 0:
        parser.error("--max-replicas must be 0 or more")
    problem = _permanent_connection_problem(opts.redis_url)
    if problem:
        print(f"mqserve worker: cannot use Redis at {redact(opts.redis_url)}: {problem}", file=sys.stderr)
        return 1
    node = Node(url=opts.redis_url, namespace=opts.namespace, node_id=node_id,
                result_ttl_ms=settings.result_ttl_ms, max_replicas=opts.max_replicas)
    signal.signal(signal.SIGTERM, lambda *_: node.request_stop())
    signal.signal(signal.SIGINT, lambda *_: node.request_stop())
    if opts.watch_stdin:
        threading.Thread(target=on_stdin_eof, args=(node.request_stop,), daemon=True).start()
    node.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
