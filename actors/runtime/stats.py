"""A replica's request figures for the dashboard: added up in memory, written once a second.

Each request costs a done-callback on its outcome future, a lock and a few additions
(no Redis command): :class:`RequestStats` keeps the count, errors and latency
histogram of the current second, and the failures to list (exception type and the
first line of its message, never arguments or results). :class:`StatsFlusher`'s thread
takes them every :data:`FLUSH_S` and writes them in one pipeline (``broker.stats.write``);
a second without requests writes nothing.

A request is counted when its outcome is known, its latency from when the replica
started it (Ray's ``processing_latency``). An error is an outcome holding an exception,
except a cancellation (the caller left: not the deployment's failure).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future

import redis

from broker import clock, codec, stats
from broker.keys import Keys

logger = logging.getLogger("mqserve.replica")

#: Seconds between two writes of a replica's figures.
FLUSH_S = 1.0


class RequestStats:
    """The figures of one replica's requests since they were last taken."""

    def __init__(self, app: str, deployment: str, replica_id: str) -> None:
        self.app, self.deployment, self.replica_id = app, deployment, replica_id
        self._lock = threading.Lock()
        self._window = stats.Window()
        self._failures: list[stats.Failure] = []

    def watch(self, outcome: Future[bytes], started: float, request_id: str) -> None:
        """Count the request once ``outcome`` resolves (``started``: ``time.perf_counter()``)."""
        outcome.add_done_callback(lambda done: self.observe(time.perf_counter() - started, done.result(), request_id))

    def observe(self, seconds: float, outcome: bytes, request_id: str = "") -> None:
        failure = None
        if codec.is_error(outcome):
            failure = self._failure(outcome, request_id)
        bucket = stats.bucket_of(seconds * 1000)
        with self._lock:
            window = self._window
            window.count += 1
            window.sum_us += int(seconds * 1_000_000)
            window.buckets[bucket] = window.buckets.get(bucket, 0) + 1
            if failure is not None:
                window.errors += 1
                if len(self._failures) < stats.MAX_ERRORS:
                    self._failures.append(failure)

    def take(self) -> tuple[stats.Window, list[stats.Failure]]:
        """The figures so far; counting starts again from zero."""
        with self._lock:
            taken = self._window, self._failures
            self._window, self._failures = stats.Window(), []
        return taken

    def _failure(self, outcome: bytes, request_id: str) -> stats.Failure | None:
        try:
            type_name, message = codec.error_summary(outcome)
        except Exception:  # unreadable: still an error
            type_name, message = "Exception", ""
        if type_name.endswith("RequestCancelledError"):
            return None
        now = clock.now()
        return stats.Failure(time.time() if now is None else now, self.app, self.deployment, self.replica_id,
                             type_name.rsplit(".", 1)[-1], stats.first_line(message), request_id)


class StatsFlusher:
    """Writes a replica's figures every :data:`FLUSH_S` from a thread of its own."""

    def __init__(self, client: redis.Redis, keys: Keys, figures: RequestStats) -> None:
        self.client, self.keys, self.figures = client, keys, figures
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqserve-stats", daemon=True)

    def start(self) -> StatsFlusher:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Write what is left, then stop the thread."""
        self._stopped.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stopped.wait(FLUSH_S):
            self.flush()
        self.flush()

    def flush(self) -> None:
        window, failures = self.figures.take()
        if window.count == 0:
            return
        now = clock.now()
        now_ms = int((time.time() if now is None else now) * 1000)
        f = self.figures
        try:
            stats.write(self.client, self.keys, f.app, f.deployment, f.replica_id, window, failures, now_ms)
        except redis.RedisError as e:  # figures are best effort: this second is lost
            logger.debug("could not write the request figures: %s", e)
