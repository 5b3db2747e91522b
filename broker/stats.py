"""The dashboard's figures in Redis: per-second windows per deployment, totals, recent errors.

Nothing here is written per request. A replica adds up its requests in memory (count,
errors, latency histogram; ``actors.runtime.stats``) and writes them once a second, in
one pipeline, with :func:`write`:

- an entry in the deployment's stream ``stats:{app}:{dep}`` (fields ``r`` replica, ``n``
  requests, ``e`` errors, ``s`` latency sum in microseconds, ``h`` histogram as
  ``"bucket:count,..."``), the stream trimmed in the same ``XADD`` to the last
  :data:`WINDOW_S` seconds (``MINID``: entry ids are Redis's clock) and expiring
  :data:`STREAM_TTL_MS` after its last write;
- the same figures added to the deployment's totals ``totals:{app}:{dep}`` (``HINCRBY``;
  Prometheus counters and histogram);
- its failed requests of that second (at most :data:`MAX_ERRORS`) pushed to the
  namespace's list ``errors``, trimmed to :data:`MAX_ERRORS`.

The controller, which reads every deployment's queue depth and in-flight count on each
pass anyway, adds one entry ``q``/``o`` per deployment per second (:func:`sample_load`).

A gateway reads it all back with :func:`read` (one pipeline) and merges the entries of
every replica: the figures are cluster-wide, the same whichever gateway reads them.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from .keys import Keys

#: Seconds of history a deployment's stream keeps (the dashboard's 5-minute sparklines).
WINDOW_S = 300
#: A stream nobody writes to any more (its deployment idle or deleted) expires after this.
STREAM_TTL_MS = (WINDOW_S + 10) * 1000
#: Totals of a deployment nobody served for a day expire (a replica still draining after
#: its app was deleted must not leave them behind forever).
TOTALS_TTL_MS = 24 * 3600 * 1000
#: Failed requests the namespace's ``errors`` list keeps.
MAX_ERRORS = 20
#: Longest exception message kept (its first line only).
MAX_MESSAGE_CHARS = 200
#: Upper bounds (milliseconds) of the latency histogram's buckets: log-spaced, 2**(1/4)
#: apart from 0.1 ms to about 105 s, so a quantile read from it is within 10% of the
#: truth. Bucket ``len(BOUNDS_MS)`` holds what is slower than the last bound.
BOUNDS_MS: tuple[float, ...] = tuple(0.1 * 2 ** (i / 4) for i in range(81))


def bucket_of(ms: float) -> int:
    """The histogram bucket of a latency of ``ms`` milliseconds."""
    return bisect.bisect_left(BOUNDS_MS, ms)


@dataclass
class Window:
    """Requests of one deployment over some time: counts and a latency histogram."""

    count: int = 0
    errors: int = 0
    #: Sum of latencies, microseconds.
    sum_us: int = 0
    #: Bucket index -> requests (see :data:`BOUNDS_MS`).
    buckets: dict[int, int] = field(default_factory=dict)

    def add(self, other: Window) -> None:
        self.count += other.count
        self.errors += other.errors
        self.sum_us += other.sum_us
        for i, n in other.buckets.items():
            self.buckets[i] = self.buckets.get(i, 0) + n

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the latencies in milliseconds (None without requests),
        interpolated geometrically inside its bucket."""
        total = sum(self.buckets.values())
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i in sorted(self.buckets):
            n = self.buckets[i]
            if seen + n >= rank:
                low = BOUNDS_MS[i - 1] if i > 0 else BOUNDS_MS[0] / 2 ** 0.25
                high = BOUNDS_MS[i] if i < len(BOUNDS_MS) else BOUNDS_MS[-1]
                frac = (rank - seen) / n if n else 1.0
                return float(low * (high / low) ** frac)
            seen += n
        return BOUNDS_MS[-1]


@dataclass
class Failure:
    """A failed request, as the dashboard lists it: never its arguments or result."""

    time_s: float
    app: str
    deployment: str
    replica: str
    type: str
    message: str
    request_id: str = ""

    def to_json(self) -> str:
        return json.dumps({"time_s": round(self.time_s, 3), "app": self.app, "deployment": self.deployment,
                           "replica": self.replica, "type": self.type, "message": self.message,
                           "request_id": self.request_id})


@dataclass
class Entry:
    """One entry of a deployment's stream: a replica's second, or a controller sample."""

    t_ms: int
    replica: str | None = None
    window: Window | None = None
    queued: int | None = None
    ongoing: int | None = None


@dataclass
class Reading:
    """What :func:`read` found: Redis's time, and per deployment its entries and totals."""

    now_ms: int
    entries: dict[tuple[str, str], list[Entry]]
    totals: dict[tuple[str, str], Window]
    errors: list[dict[str, Any]]


def first_line(message: str) -> str:
    """The first line of an exception's message, cut to :data:`MAX_MESSAGE_CHARS`."""
    line = message.strip().split("\n", 1)[0]
    return line if len(line) <= MAX_MESSAGE_CHARS else line[:MAX_MESSAGE_CHARS - 1] + "…"


def encode_buckets(buckets: Mapping[int, int]) -> str:
    return ",".join(f"{i}:{n}" for i, n in sorted(buckets.items()) if n)


def decode_buckets(raw: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for part in raw.split(","):
        if part:
            i, n = part.split(":")
            out[int(i)] = int(n)
    return out


def write(client: redis.Redis, keys: Keys, app: str, dep: str, replica_id: str, window: Window,
          failures: Sequence[Failure], now_ms: int) -> None:
    """A replica's figures of the last second, in one round trip (see the module's doc)."""
    pipe = client.pipeline(transaction=False)
    stream = keys.stats(app, dep)
    pipe.xadd(stream, {"r": replica_id, "n": window.count, "e": window.errors, "s": window.sum_us,
                       "h": encode_buckets(window.buckets)},
              minid=now_ms - WINDOW_S * 1000, approximate=False)
    pipe.pexpire(stream, STREAM_TTL_MS)
    totals = keys.totals(app, dep)
    pipe.hincrby(totals, "n", window.count)
    pipe.hincrby(totals, "e", window.errors)
    pipe.hincrby(totals, "s", window.sum_us)
    for i, n in window.buckets.items():
        pipe.hincrby(totals, f"b{i}", n)
    pipe.pexpire(totals, TOTALS_TTL_MS)
    if failures:
        pipe.lpush(keys.errors, *[f.to_json() for f in failures[-MAX_ERRORS:]])
        pipe.ltrim(keys.errors, 0, MAX_ERRORS - 1)
    pipe.execute()


def sample_load(client: redis.Redis, keys: Keys, loads: Mapping[tuple[str, str], tuple[int, int]],
                now_ms: int) -> None:
    """The controller's sample of each deployment's (queued, in flight), one round trip."""
    if not loads:
        return
    pipe = client.pipeline(transaction=False)
    for (app, dep), (queued, ongoing) in loads.items():
        stream = keys.stats(app, dep)
        pipe.xadd(stream, {"q": queued, "o": ongoing}, minid=now_ms - WINDOW_S * 1000, approximate=False)
        pipe.pexpire(stream, STREAM_TTL_MS)
    pipe.execute()


def read(client: redis.Redis, keys: Keys, deployments: Iterable[tuple[str, str]]) -> Reading:
    """Redis's time, each deployment's entries of the last :data:`WINDOW_S` seconds and
    totals, and the recent errors, in one round trip."""
    deps = list(deployments)
    pipe = client.pipeline(transaction=False)
    pipe.time()
    for app, dep in deps:
        pipe.xrange(keys.stats(app, dep), "-", "+")
        pipe.hgetall(keys.totals(app, dep))
    pipe.lrange(keys.errors, 0, MAX_ERRORS - 1)
    replies = pipe.execute()
    sec, usec = replies[0]
    now_ms = int(sec) * 1000 + int(usec) // 1000
    oldest = now_ms - WINDOW_S * 1000
    entries: dict[tuple[str, str], list[Entry]] = {}
    totals: dict[tuple[str, str], Window] = {}
    for i, key in enumerate(deps):
        raw_entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", replies[1 + 2 * i])
        entries[key] = [e for e in (_entry(eid, fields) for eid, fields in raw_entries) if e.t_ms > oldest]
        totals[key] = _totals(cast("dict[bytes, bytes]", replies[2 + 2 * i]))
    errors = []
    for raw in cast("list[bytes]", replies[-1]):
        try:
            errors.append(json.loads(raw))
        except ValueError:
            continue
    return Reading(now_ms, entries, totals, errors)


def read_totals(client: redis.Redis, keys: Keys, deployments: Iterable[tuple[str, str]]) -> list[Window]:
    """Each deployment's totals (``/metrics``), in one round trip."""
    pipe = client.pipeline(transaction=False)
    for app, dep in deployments:
        pipe.hgetall(keys.totals(app, dep))
    return [_totals(cast("dict[bytes, bytes]", raw)) for raw in pipe.execute()]


def _entry(entry_id: bytes, fields: dict[bytes, bytes]) -> Entry:
    t_ms = int(entry_id.split(b"-", 1)[0])
    if b"q" in fields:
        return Entry(t_ms, queued=int(fields[b"q"]), ongoing=int(fields.get(b"o", 0)))
    window = Window(int(fields.get(b"n", 0)), int(fields.get(b"e", 0)), int(fields.get(b"s", 0)),
                    decode_buckets(fields.get(b"h", b"").decode()))
    return Entry(t_ms, replica=fields.get(b"r", b"").decode(), window=window)


def _totals(raw: dict[bytes, bytes]) -> Window:
    window = Window()
    for name, value in raw.items():
        key, n = name.decode(), int(value)
        if key == "n":
            window.count = n
        elif key == "e":
            window.errors = n
        elif key == "s":
            window.sum_us = n
        elif key.startswith("b"):
            window.buckets[int(key[1:])] = n
    return window
