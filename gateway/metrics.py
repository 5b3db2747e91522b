"""Request counters and latency histograms, rendered in Prometheus text format.

Two sources: this gateway's own HTTP counters (in memory, per gateway process, as Ray's
per-proxy metrics), and the deployments' figures every gateway reads from Redis (queue
depth, in flight, and the totals replicas write once a second, ``broker.stats``), which
are cluster-wide: the same on every gateway. Beside mqserve's names, the Ray Serve names
that its Grafana dashboards query (``ray_serve_*``), where they map (README, "Metrics").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from broker import stats

#: Upper bounds (seconds) of the latency histogram buckets.
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.errors: dict[tuple[str, str, str], int] = defaultdict(int)
        self.latency_count: dict[tuple[str, str], int] = defaultdict(int)
        self.latency_sum: dict[tuple[str, str], float] = defaultdict(float)
        self.latency_buckets: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * len(BUCKETS_S))
        #: Ray's labels of HTTP requests: (application, route prefix, method, status code).
        self.http_requests: dict[tuple[str, str, str, str], int] = defaultdict(int)
        #: HTTP requests this gateway is serving now.
        self.ongoing_http = 0

    def observe(self, app: str, deployment: str, status: int, seconds: float, *, route: str = "",
                method: str = "") -> None:
        code = str(status)
        self.requests[(app, deployment, code)] += 1
        self.http_requests[(app, route, method, code)] += 1
        if status >= 400:
            self.errors[(app, deployment, code)] += 1
        key = (app, deployment)
        self.latency_count[key] += 1
        self.latency_sum[key] += seconds
        buckets = self.latency_buckets[key]
        for i, bound in enumerate(BUCKETS_S):
            if seconds <= bound:
                buckets[i] += 1

    def render(self, queues: Iterable[tuple[str, str, int, int, int]], figures: Sequence[DeploymentFigures] = ()
               ) -> str:
        """Prometheus text; ``queues`` gives (app, deployment, queued, ongoing, expired) per
        deployment (``expired``: requests dropped or cancelled as their deadline passed),
        ``figures`` each deployment's totals (``broker.stats``) for Ray's names."""
        out = ["# HELP mqserve_http_requests_total HTTP requests by application, deployment and status.",
               "# TYPE mqserve_http_requests_total counter"]
        for (app, dep, code), n in sorted(self.requests.items()):
            out.append(f'mqserve_http_requests_total{{application="{app}",deployment="{dep}",status="{code}"}} {n}')
        out += ["# HELP mqserve_http_errors_total HTTP requests answered with status >= 400.",
                "# TYPE mqserve_http_errors_total counter"]
        for (app, dep, code), n in sorted(self.errors.items()):
            out.append(f'mqserve_http_errors_total{{application="{app}",deployment="{dep}",status="{code}"}} {n}')
        out += ["# HELP mqserve_http_request_latency_seconds Gateway latency of HTTP requests.",
                "# TYPE mqserve_http_request_latency_seconds histogram"]
        for (app, dep), count in sorted(self.latency_count.items()):
            labels = f'application="{app}",deployment="{dep}"'
            for bound, n in zip(BUCKETS_S, self.latency_buckets[(app, dep)]):
                out.append(f'mqserve_http_request_latency_seconds_bucket{{{labels},le="{bound}"}} {n}')
            out.append(f'mqserve_http_request_latency_seconds_bucket{{{labels},le="+Inf"}} {count}')
            out.append(f"mqserve_http_request_latency_seconds_sum{{{labels}}} {self.latency_sum[(app, dep)]:.6f}")
            out.append(f"mqserve_http_request_latency_seconds_count{{{labels}}} {count}")
        out += ["# HELP mqserve_deployment_queued_requests Requests waiting in a deployment's queue.",
                "# TYPE mqserve_deployment_queued_requests gauge"]
        rows = list(queues)
        for app, dep, queued, _, _ in rows:
            out.append(f'mqserve_deployment_queued_requests{{application="{app}",deployment="{dep}"}} {queued}')
        out += ["# HELP mqserve_deployment_ongoing_requests Requests replicas have taken and not answered.",
                "# TYPE mqserve_deployment_ongoing_requests gauge"]
        for app, dep, _, ongoing, _ in rows:
            out.append(f'mqserve_deployment_ongoing_requests{{application="{app}",deployment="{dep}"}} {ongoing}')
        out += ["# HELP mqserve_deployment_expired_requests_total Requests whose deadline passed: dropped "
                "unrun, or cancelled while running.",
                "# TYPE mqserve_deployment_expired_requests_total counter"]
        for app, dep, _, _, expired in rows:
            out.append(f'mqserve_deployment_expired_requests_total{{application="{app}",deployment="{dep}"}} {expired}')
        out += self._ray(rows, figures)
        return "\n".join(out) + "\n"

    def _ray(self, rows: list[tuple[str, str, int, int, int]], figures: Sequence[DeploymentFigures]) -> list[str]:
        """Ray Serve's metric names (counters with Prometheus' ``_total``, as Ray exports them)."""
        out = ["# HELP ray_serve_num_http_requests_total HTTP requests this gateway served (Ray's proxy counter).",
               "# TYPE ray_serve_num_http_requests_total counter"]
        for (app, route, method, code), n in sorted(self.http_requests.items()):
            out.append(f'ray_serve_num_http_requests_total{{application="{app}",route="{route}",method="{method}",'
                       f'status_code="{code}"}} {n}')
        out += ["# HELP ray_serve_num_ongoing_http_requests HTTP requests this gateway is serving now.",
                "# TYPE ray_serve_num_ongoing_http_requests gauge",
                f"ray_serve_num_ongoing_http_requests {self.ongoing_http}",
                "# HELP ray_serve_deployment_request_counter_total Requests replicas of the deployment finished "
                "(cluster-wide).",
                "# TYPE ray_serve_deployment_request_counter_total counter"]
        for f in figures:
            out.append(f'ray_serve_deployment_request_counter_total{{{f.labels}}} {f.totals.count}')
        out += ["# HELP ray_serve_deployment_error_counter_total Requests of the deployment that raised "
                "(cluster-wide).",
                "# TYPE ray_serve_deployment_error_counter_total counter"]
        for f in figures:
            out.append(f'ray_serve_deployment_error_counter_total{{{f.labels}}} {f.totals.errors}')
        out += ["# HELP ray_serve_deployment_processing_latency_ms Time replicas took to process requests "
                "(cluster-wide).",
                "# TYPE ray_serve_deployment_processing_latency_ms histogram"]
        for f in figures:
            out += _histogram("ray_serve_deployment_processing_latency_ms", f.labels, f.totals)
        out += ["# HELP ray_serve_deployment_queued_queries Requests waiting for a replica of the deployment.",
                "# TYPE ray_serve_deployment_queued_queries gauge"]
        for app, dep, queued, _, _ in rows:
            out.append(f'ray_serve_deployment_queued_queries{{application="{app}",deployment="{dep}"}} {queued}')
        return out


@dataclass
class DeploymentFigures:
    """A deployment's totals (``broker.stats``), for Ray's deployment metrics."""

    app: str
    deployment: str
    totals: stats.Window

    @property
    def labels(self) -> str:
        return f'application="{self.app}",deployment="{self.deployment}"'


#: Every 4th bound of ``stats.BOUNDS_MS`` (powers of two from 0.1 ms): the Prometheus
#: buckets of the latency histogram (cumulative counts are exact at any of the bounds).
_PROM_BOUNDS = range(0, len(stats.BOUNDS_MS), 4)


def _histogram(name: str, labels: str, window: stats.Window) -> list[str]:
    out, cumulative, i = [], 0, 0
    ordered = sorted(window.buckets.items())
    for b in _PROM_BOUNDS:
        while i < len(ordered) and ordered[i][0] <= b:
            cumulative += ordered[i][1]
            i += 1
        out.append(f'{name}_bucket{{{labels},le="{stats.BOUNDS_MS[b]:g}"}} {cumulative}')
    out.append(f'{name}_bucket{{{labels},le="+Inf"}} {window.count}')
    out.append(f"{name}_sum{{{labels}}} {window.sum_us / 1000:.3f}")
    out.append(f"{name}_count{{{labels}}} {window.count}")
    return out
