"""The replica process: one copy of a deployment, run as a Dramatiq worker.

Started by a node (``python -m actors.runtime.replica ...``). It loads the deployment's code
from the registry (cloudpickle), constructs it, and consumes the deployment's queue
with a Dramatiq ``Worker`` whose threads are the replica's thread pool: sync methods
run on them, async methods run on the replica's one event loop. Concurrency is
``max_ongoing_requests``: that many worker threads, and the consumer never holds more
unfinished messages than that, so queued requests stay in Redis for any idle replica.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import linecache
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle
import dramatiq
import redis
from dramatiq.asyncio import EventLoopThread
from dramatiq.middleware import CurrentMessage

from broker import clock, codec, mux
from broker.connection import connect, connect_async
from broker.keys import Keys
from broker.queue import ServeBroker
from broker.registry import Registry

from ..batching import batch_capacity
from ..config import DEFAULT_LOG_LEVEL, DEFAULT_LOGS_DIR, DeploymentConfig, Settings, user_config_tag
from . import bridge, http, identity, multiplex
from .caller import close_clients
from .cancellation import Cancellations
from .outcomes import OutcomeWriter
from .procs import on_stdin_eof, setup_logging
from .requests import RedisTransport, Requests
from .stats import RequestStats, StatsFlusher

logger = logging.getLogger("mqserve.replica")

#: Failed health checks in a row after which a replica is replaced (Ray Serve's threshold).
UNHEALTHY_AFTER = 3
#: Seconds between checks that Redis still holds our records (see broker/epoch.py).
DATA_CHECK_S = 1.0
#: Milliseconds a Dramatiq consumer or worker thread blocks before checking for shutdown.
WORKER_TIMEOUT_MS = 1000


class Replica:
    """Builds the user's object and serves its deployment's queue until told to stop."""

    def __init__(self, *, url: str, namespace: str, app: str, deployment: str, replica_id: str,
                 version: str, node_id: str, result_ttl_ms: int, log_level: str = DEFAULT_LOG_LEVEL,
                 logs_dir: str = DEFAULT_LOGS_DIR) -> None:
        self.url, self.keys = url, Keys(namespace)
        self.log_level, self.logs_dir = log_level, logs_dir
        self.app, self.deployment, self.replica_id = app, deployment, replica_id
        self.version, self.node_id, self.result_ttl_ms = version, node_id, result_ttl_ms
        self.registry = Registry(connect(url), self.keys)
        self.stop_requested = threading.Event()
        self.loop_thread: EventLoopThread | None = None
        self.target: Any = None
        self.is_function = False
        self.user_config_tag = ""
        self.cancels = Cancellations()
        #: The @serve.ingress app, whose lifespan runs while the replica does.
        self.ingress: http.Ingress | None = None
        #: Set when check_health failed: the record keeps saying UNHEALTHY while it stops.
        self.unhealthy = False

    def _record(self, state: str, **extra: Any) -> None:
        self.registry.set_replica(self.app, self.deployment, self.replica_id, {
            "state": state, "node": self.node_id, "pid": os.getpid(), "version": self.version,
            "user_config_tag": self.user_config_tag, **extra})

    def run(self) -> int:
        spec = self.registry.deployment(self.app, self.deployment)
        if spec is None or spec["version"] != self.version:
            logger.info("deployment %s/%s is gone or was upgraded; not starting", self.app, self.deployment)
            return 0
        self._record("STARTING")
        config = DeploymentConfig(**spec["config"])
        self.user_config_tag = user_config_tag(config.user_config)
        self.access = identity.enter(self.registry, app=self.app, deployment=self.deployment,
                                     replica_id=self.replica_id, node_id=self.node_id, config=config,
                                     log_level=self.log_level, logs_dir=self.logs_dir)
        try:
            self._construct(spec["spec"], config)
        except BaseException as e:
            logger.error("constructor of deployment '%s' raised %s: %s (the traceback is in serve.status())",
                         self.deployment, type(e).__name__, e)
            self.registry.set_replica_error(self.replica_id, codec.encode_error(e), self.result_ttl_ms)
            self._record("DEPLOY_FAILED", message="".join(traceback.format_exception(e)))
            if self.loop_thread is not None:
                self.loop_thread.stop()
            return 1
        identity.serving(self.target)
        # What this replica writes back if Redis restarts without its data.
        self.app_record = self.registry.app(self.app)
        self.deployment_fields = self.registry.deployment_fields(self.app, self.deployment)
        clock.sync(self.registry.redis)  # before the first request: its age is judged in Redis's time
        self.multiplexed = bool(spec["multiplexed"])  # its requests are routed by model (broker/mux.py)
        worker, broker = self._start_worker(config)
        self._record("RUNNING")
        threading.Thread(target=self._follow_events, name="mqserve-events", daemon=True).start()
        check = None if self.is_function else getattr(self.target, "check_health", None)
        if callable(check) and config.health_check_period_s > 0 and self.loop_thread is not None:
            bridge.submit(self.loop_thread.loop, self._watch_health(check, config))
        logger.info("replica %s of %s/%s is serving", self.replica_id, self.app, self.deployment)
        self.stop_requested.wait()
        self._stop(worker, broker, config)
        return 0

    def _stop(self, worker: dramatiq.Worker, broker: ServeBroker, config: DeploymentConfig) -> None:
        """Let in-flight requests finish (within the graceful timeout), then close what
        the replica opened, the event loop last: async work and outcome writes run on it."""
        broker.draining.set()  # before STOPPING is visible: a deploy waiting on it may return
        try:
            if not self.unhealthy:
                self._record("STOPPING")
        except redis.RedisError as e:  # stopping because Redis (and the driver) went away
            logger.info("could not record STOPPING: %s", e)
        # In-flight requests (async ones run on the loop, not on Dramatiq's threads) finish first.
        if not broker.drain(config.graceful_shutdown_timeout_s, config.graceful_shutdown_wait_loop_s):
            logger.warning("requests still running after graceful_shutdown_timeout_s=%s; stopping anyway",
                           config.graceful_shutdown_timeout_s)
        worker.stop(timeout=int(config.graceful_shutdown_timeout_s * 1000))
        self._unload_models(config.graceful_shutdown_timeout_s)
        self.outcomes.close()
        self.stats.stop()  # after the last outcome: its figures are written too
        self._stop_ingress(config.graceful_shutdown_timeout_s)
        if self.access is not None:
            self.access.close()
        broker.close()
        close_clients()
        if self.loop_thread is not None:
            try:
                bridge.submit(self.loop_thread.loop, self._quiesce()).result(timeout=5)
            except Exception as e:
                logger.info("event loop did not wind down cleanly: %s", e)
            self.loop_thread.stop()

    def _follow_events(self) -> None:
        """Cancel running async requests whose callers cancelled them, apply a new
        user_config (same code redeployed) without a restart, and restore our records
        if Redis lost them."""
        reconfigure = None if self.is_function else getattr(self.target, "reconfigure", None)
        run_id: str | None = None
        checked = 0.0
        refused: str | None = None  # the user_config tag that reconfigure last raised on

        def apply_user_config(retry: bool) -> None:
            nonlocal refused
            spec = self.registry.deployment(self.app, self.deployment)
            if spec is None or spec["version"] != self.version:
                return  # deleted or upgraded: the controller replaces us
            user_config = spec["config"].get("user_config")
            tag = user_config_tag(user_config)
            if tag == self.user_config_tag or (tag == refused and not retry):
                return
            if callable(reconfigure) and user_config is not None:
                refused = tag
                self._call(reconfigure, (user_config,), {})
            refused = None
            self.user_config_tag = tag
            self._record("RUNNING")

        def on_event(event: dict[str, Any] | None) -> None:
            nonlocal run_id, checked
            if time.monotonic() - checked >= DATA_CHECK_S:
                checked = time.monotonic()
                run_id = self._restore_if_lost(run_id)
            if event is None:
                return
            if event["channel"] == self.keys.cancellations.encode():
                self.cancels.heard(event["data"].decode())
                return
            if json.loads(event["data"]).get("app") == self.app:
                identity.refresh_rank(self.registry, self.node_id, self.replica_id)
                apply_user_config(retry=True)  # a deploy asks again, even for a config refused before

        def subscribed() -> None:
            # What was published while we were not listening: cancellations, and a
            # user_config written before our first subscription (or between two).
            for req_id in self.registry.cancelled_taken(self.replica_id):
                self.cancels.heard(req_id)
            identity.refresh_rank(self.registry, self.node_id, self.replica_id)
            apply_user_config(retry=False)

        self.registry.follow(on_event, self.stop_requested, every_s=DATA_CHECK_S, cancellations=True,
                             subscribed=subscribed, what="cancellations and user_config changes")

    def _restore_if_lost(self, run_id: str | None) -> str:
        """If Redis restarted empty, write back our app, deployment and replica records
        (the gateways then find the route again, the controller the deployment)."""
        lost, run_id = self.registry.data_lost(run_id)
        if lost:
            logger.warning("Redis lost its data; replica %s restores its records", self.replica_id)
            if self.app_record is not None:
                self.registry.restore_app(self.app_record, self.deployment, self.deployment_fields)
            self._record("RUNNING")
            self._restore_routing()
        return run_id

    def _restore_routing(self) -> None:
        """After a data loss: be routed to again, with the models held (multiplexing)."""
        if self.broker.route is not None:
            self.broker.route.join(self.registry.redis)
        if self.loop_thread is not None:
            bridge.submit(self.loop_thread.loop, multiplex.report_all()).result(timeout=10)

    def _multiplex(self, broker: ServeBroker, concurrency: int) -> None:
        """If the deployment has a ``@serve.multiplexed`` loader, be routed requests by
        model (``broker/mux.py``), as many as ``concurrency`` at once."""
        self.broker = broker
        if self.multiplexed:
            broker.route = mux.Membership(self.keys, self.app, self.deployment, self.replica_id, concurrency)

    def _unload_models(self, timeout_s: float) -> None:
        """Unload the models of ``@serve.multiplexed`` loaders (their ``__del__`` run), as
        Ray Serve does when a replica stops."""
        if self.loop_thread is not None:
            try:
                bridge.submit(self.loop_thread.loop, multiplex.unload_all()).result(timeout=timeout_s)
            except Exception as e:
                logger.warning("unloading the multiplexed models did not finish: %r", e)

    async def _watch_health(self, check: Callable[[], Any], config: DeploymentConfig) -> None:
        """Call ``check_health`` every period; after :data:`UNHEALTHY_AFTER` failures in a
        row (an exception or a timeout), stop, so that the controller starts a replacement."""
        failures = 0
        while not self.stop_requested.is_set():
            await asyncio.sleep(config.health_check_period_s)
            try:
                if inspect.iscoroutinefunction(check):
                    await asyncio.wait_for(check(), config.health_check_timeout_s)
                else:
                    await asyncio.wait_for(bridge.run_sync(check), config.health_check_timeout_s)
                failures = 0
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                failures += 1
                reason = "timed out" if isinstance(e, asyncio.TimeoutError) else f"raised {type(e).__name__}: {e}"
                logger.warning("health check %d/%d of %s %s", failures, UNHEALTHY_AFTER, self.replica_id, reason)
                if failures >= UNHEALTHY_AFTER:
                    message = f"check_health {reason} {failures} times in a row; replacing this replica"
                    self.unhealthy = True
                    await bridge.run_sync(self._record, "UNHEALTHY", message=message)
                    self.stop_requested.set()
                    return

    async def _quiesce(self) -> None:
        """Cancel what still runs on the loop and close its connections before it stops."""
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.aio.aclose()

    def _construct(self, blob: bytes, config: DeploymentConfig) -> None:
        func_or_class, args, kwargs, sources = cloudpickle.loads(codec.unseal(blob))  # refuses forged code
        remember_sources(sources)
        self.loop_thread = EventLoopThread(logging.getLogger("mqserve.replica.loop"))
        self.loop_thread.start(timeout=10)
        self.aio = connect_async(self.url)  # used on the loop only
        multiplex.attach(mux.Holdings(self.aio, self.keys, self.replica_id))  # a constructor may load models
        if inspect.isclass(func_or_class):
            if inspect.iscoroutinefunction(func_or_class.__init__):
                # An async constructor (Ray awaits it): build the object, then await its
                # __init__ on the replica's loop, where its async methods will run.
                self.target = func_or_class.__new__(func_or_class)
                self._call(self.target.__init__, args, kwargs)
            else:
                self.target = func_or_class(*args, **kwargs)
            self.ingress = http.ingress_of(self.target)
            if self.ingress is not None:  # its lifespan starts after the constructor, as in Ray
                self.loop_thread.run_coroutine(self.ingress.start())
            reconfigure = getattr(self.target, "reconfigure", None)
            if config.user_config is not None and callable(reconfigure):
                self._call(reconfigure, (config.user_config,), {})
        else:
            self.target, self.is_function = func_or_class, True

    def _stop_ingress(self, timeout_s: float) -> None:
        """Run the ingress app's lifespan shutdown, once its requests are done."""
        if self.ingress is None or self.loop_thread is None:
            return
        try:
            bridge.submit(self.loop_thread.loop, self.ingress.stop()).result(timeout=timeout_s)
        except Exception as e:
            logger.warning("the ingress app's lifespan shutdown did not finish: %r", e)

    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run user code to the end, here (constructor-time calls such as reconfigure)."""
        assert self.loop_thread is not None
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            return self.loop_thread.run_coroutine(result)
        return result

    def _handle_request(self, *_args: Any) -> None:
        """The Dramatiq actor: hands the message to :class:`Requests`, and the future of
        its outcome to the :class:`OutcomeWriter`, which has it written once resolved."""
        message: Any = CurrentMessage.get_current_message()
        if message.options.get(codec.BACKGROUND_OPTION):
            self.outcomes.broker.started(message, self.app, self.deployment)
        self.outcomes.settle(message, self.requests.run(message))

    def _start_here(self, message: Any) -> bool:
        """Start a call of an async method on the event loop from the consumer's thread,
        skipping the hop to a worker thread: all it does before the loop takes over is
        unpickle its arguments. Not for calls that may block first (chained arguments to
        wait for; a background request's RUNNING mark) nor for other kinds of requests."""
        options = message.options
        method, _, refs = message.args
        if refs or options.get("stream") or options.get("http") or options.get(codec.BACKGROUND_OPTION):
            return False
        is_async = self._async_methods.get(method)
        if is_async is None:
            target = self.target if self.is_function else getattr(self.target, method, None)
            is_async = self._async_methods[method] = inspect.iscoroutinefunction(target)
        if not is_async:
            return False
        self.outcomes.settle(message, self.requests.run(message))
        return True

    def _start_worker(self, config: DeploymentConfig) -> tuple[dramatiq.Worker, ServeBroker]:
        assert self.loop_thread is not None
        transport = RedisTransport(url=self.url, keys=self.keys, result_ttl_ms=self.result_ttl_ms, aio=self.aio)
        figures = RequestStats(self.app, self.deployment, self.replica_id)
        self.stats = StatsFlusher(self.registry.redis, self.keys, figures).start()
        self.requests = Requests(target=self.target, is_function=self.is_function, deployment=self.deployment,
                                 transport=transport, loop=self.loop_thread.loop, cancels=self.cancels,
                                 app=self.app, access=self.access, stats=figures)
        broker = ServeBroker(self.url, self.keys, queue_key=self.keys.queue(self.app, self.deployment),
                             processing_key=self.keys.processing(self.replica_id),
                             result_ttl_ms=self.result_ttl_ms, middleware=[CurrentMessage()])
        self.outcomes = OutcomeWriter(broker)
        self._async_methods: dict[str, bool] = {}
        broker.start_here = self._start_here
        dramatiq.Actor(self._handle_request, broker=broker, actor_name=codec.REQUEST_ACTOR,
                       queue_name=codec.REQUEST_QUEUE, priority=0, options={})
        concurrency = config.max_ongoing_requests
        if not config.max_ongoing_requests_set:
            # Batches fill from concurrent requests: let enough in (ray#43288).
            concurrency = max(concurrency, batch_capacity(self.target))
        self._multiplex(broker, concurrency)
        worker = dramatiq.Worker(broker, worker_threads=concurrency, worker_timeout=WORKER_TIMEOUT_MS)
        worker.queue_prefetch = concurrency  # never hold work an idle replica could take
        worker.start()
        return worker, broker


def remember_sources(sources: dict[str, str]) -> None:
    """Let tracebacks show the lines of the user code shipped by value, as it was when
    deployed: the worker may lack its file (another machine), or hold another version
    of it. (An entry without mtime is never re-read from disk by ``linecache``.)"""
    for path, text in sources.items():
        linecache.cache[path] = (len(text), None, text.splitlines(keepends=True), path)


#: Python's GIL switch interval in replicas, in seconds (the default is 5 ms). User code
#: that computes without releasing the GIL would otherwise hold the event loop, and
#: with it stream writes and async requests, for up to 5 ms at a time.
SWITCH_INTERVAL_S = 0.001


def main(argv: list[str] | None = None) -> int:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    settings = Settings.from_env()
    codec.use_secret(settings.secret)
    parser = argparse.ArgumentParser(prog="python -m actors.runtime.replica")
    # The Redis URL comes in the environment (MQSERVE_REDIS_URL), not argv: it may hold a
    # password, and every local user can read a process's command line.
    parser.add_argument("--redis-url", default=settings.redis_url, required=settings.redis_url is None)
    for name in ("namespace", "app", "deployment", "replica-id", "version", "node-id"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--result-ttl-ms", type=int, required=True)
    opts = parser.parse_args(argv)
    setup_logging(settings.log_level, opts.replica_id, quiet=("dramatiq", "mqserve.replica.loop"))
    replica = Replica(url=opts.redis_url, namespace=opts.namespace, app=opts.app, deployment=opts.deployment,
                      replica_id=opts.replica_id, version=opts.version, node_id=opts.node_id,
                      result_ttl_ms=opts.result_ttl_ms, log_level=settings.log_level, logs_dir=settings.logs_dir)
    signal.signal(signal.SIGTERM, lambda *_: replica.stop_requested.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=on_stdin_eof, args=(replica.stop_requested.set,), daemon=True).start()
    return replica.run()


if __name__ == "__main__":
    sys.exit(main())
