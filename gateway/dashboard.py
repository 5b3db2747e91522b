"""The live dashboard: ``GET /-/dashboard`` (a page) and ``GET /-/api/status`` (its JSON).

Every figure comes from Redis, so every gateway shows the same: the status of
applications, deployments and replicas (``collect_status`` and the replica records),
workers and gateways with their heartbeat age, the controller's leader, and the
per-second figures replicas and the controller write (``broker.stats``), merged here
across replicas into requests/s, error rate and p50/p99 over the last minute and
5-minute series. Read-only: nothing of a request's arguments or results is stored.

The page polls the JSON every second. A reading is shared by the requests that come
within :data:`CACHE_S` of it, so several open pages cost the gateway one reading.
"""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from actors.runtime import bridge
from actors.status import collect_status
from broker import stats
from broker.registry import Registry

#: Seconds a reading of the JSON is served again to other requests.
CACHE_S = 0.5
#: Seconds over which requests/s, the error rate and the latency quantiles are computed.
RATE_WINDOW_S = 60
#: A queue-depth sample stands for the seconds after it, up to this many, until the next
#: one (the controller samples about once a second, and writes nothing while idle).
HOLD_SAMPLE_S = 3
_NO_STORE = {"Cache-Control": "no-store"}


def snapshot(registry: Registry) -> dict[str, Any]:
    """The dashboard's JSON (documented in the README, "The dashboard")."""
    status = collect_status(registry)
    deployments = [(app, dep) for app, overview in status.applications.items() for dep in overview.deployments]
    reading = stats.read(registry.redis, registry.keys, deployments)
    applications: dict[str, Any] = {}
    for app, overview in status.applications.items():
        records = registry.replica_sets(app, overview.deployments)
        deps: dict[str, Any] = {}
        for name, dep in overview.deployments.items():
            replicas = [{"id": rid, "state": rec.get("state", "UNKNOWN"), "worker": rec.get("node", ""),
                         "pid": rec.get("pid")} for rid, rec in sorted(records.get(name, {}).items())]
            deps[name] = {
                "status": dep.status, "status_trigger": dep.status_trigger, "message": dep.message,
                "target_replicas": dep.target_replicas, "replica_states": dep.replica_states,
                "replicas": replicas, "queued_requests": dep.queued_requests,
                "ongoing_requests": dep.ongoing_requests, "multiplexed_model_ids": dep.multiplexed_model_ids,
                **figures(reading.entries.get((app, name), []), reading.totals.get((app, name)), reading.now_ms),
            }
        applications[app] = {"status": overview.status, "message": overview.message,
                             "route_prefix": overview.route_prefix, "ingress": overview.ingress,
                             "last_deployed_time_s": overview.last_deployed_time_s, "deployments": deps}
    return {
        "time_s": reading.now_ms / 1000,
        "window_s": stats.WINDOW_S,
        "rate_window_s": RATE_WINDOW_S,
        "controller": status.controller,
        "workers": status.workers,
        "gateways": status.gateways,
        "applications": applications,
        # Newest first: each replica pushes its own, once a second, so the list is not in order.
        "recent_errors": sorted(reading.errors, key=lambda e: -float(e.get("time_s", 0))),
    }


def figures(entries: list[stats.Entry], totals: stats.Window | None, now_ms: int) -> dict[str, Any]:
    """A deployment's figures from its stream's entries (every replica's and the
    controller's): totals, last-minute rates and quantiles, and per-second series over
    the last :data:`stats.WINDOW_S` complete seconds."""
    bins = stats.WINDOW_S
    end_s = now_ms // 1000  # the current second is not complete: the series ends before it
    start_s = end_s - bins
    per_second = [stats.Window() for _ in range(bins)]
    queued: list[int | None] = [None] * bins
    minute = stats.Window()
    for entry in entries:
        i = entry.t_ms // 1000 - start_s
        if entry.window is not None:
            if entry.t_ms > now_ms - RATE_WINDOW_S * 1000:
                minute.add(entry.window)
            if 0 <= i < bins:
                per_second[i].add(entry.window)
        elif entry.queued is not None and 0 <= i < bins:
            queued[i] = max(queued[i] or 0, entry.queued)
    depth, held, last = [], 0, 0
    for sample in queued:
        if sample is not None:
            last, held = sample, 0
        else:
            held += 1
            if held > HOLD_SAMPLE_S:
                last = 0
        depth.append(last)
    p99 = [w.quantile(0.99) for w in per_second]
    return {
        "requests_total": totals.count if totals else 0,
        "errors_total": totals.errors if totals else 0,
        "requests_per_s": round(minute.count / RATE_WINDOW_S, 3),
        "error_rate": round(minute.errors / minute.count, 4) if minute.count else None,
        "p50_ms": _ms(minute.quantile(0.5)),
        "p99_ms": _ms(minute.quantile(0.99)),
        "series": {"start_s": start_s, "step_s": 1,
                   "requests_per_s": [w.count for w in per_second],
                   "queue_depth": depth,
                   "p99_ms": [_ms(v) for v in p99]},
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class Dashboard:
    """The dashboard's endpoints on one gateway."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._page = resources.files("gateway").joinpath("static/dashboard.html").read_bytes()
        self._script = resources.files("gateway").joinpath("static/dashboard.js").read_bytes()
        self._reading: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    def routes(self) -> list[Route]:
        return [Route("/-/dashboard", self.page, methods=["GET"]),
                Route("/-/dashboard.js", self.script, methods=["GET"]),
                Route("/-/api/status", self.status, methods=["GET"])]

    async def page(self, request: Request) -> Response:
        return Response(self._page, media_type="text/html; charset=utf-8", headers=_NO_STORE)

    async def script(self, request: Request) -> Response:
        return Response(self._script, media_type="text/javascript; charset=utf-8", headers=_NO_STORE)

    async def status(self, request: Request) -> Response:
        return JSONResponse(await self.reading(), headers=_NO_STORE)

    async def reading(self) -> dict[str, Any]:
        async with self._lock:  # concurrent requests wait for one reading
            if self._reading is None or time.monotonic() - self._reading[0] > CACHE_S:
                self._reading = (time.monotonic(), await bridge.run_sync(snapshot, self.registry))
            return self._reading[1]
