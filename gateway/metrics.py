"""Request counters and latency histograms, rendered in Prometheus text format."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

#: Upper bounds (seconds) of the latency histogram buckets.
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.errors: dict[tuple[str, str, str], int] = defaultdict(int)
        self.latency_count: dict[tuple[str, str], int] = defaultdict(int)
        self.latency_sum: dict[tuple[str, str], float] = defaultdict(float)
        self.latency_buckets: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * len(BUCKETS_S))

    def observe(self, app: str, deployment: str, status: int, seconds: float) -> None:
        code = str(status)
        self.requests[(app, deployment, code)] += 1
        if status >= 400:
            self.errors[(app, deployment, code)] += 1
        key = (app, deployment)
        self.latency_count[key] += 1
        self.latency_sum[key] += seconds
        buckets = self.latency_buckets[key]
        for i, bound in enumerate(BUCKETS_S):
            if seconds <= bound:
                buckets[i] += 1

    def render(self, queues: Iterable[tuple[str, str, int, int, int]]) -> str:
        """Prometheus text; ``queues`` gives (app, deployment, queued, ongoing, expired) per
        deployment (``expired``: requests dropped or cancelled as their deadline passed)."""
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
        return "\n".join(out) + "\n"
