"""Helpers shared by the benchmarks: stdout discipline, percentiles, the chain app.

Importing this module moves file descriptor 1 onto stderr, so that everything the
benchmark, mqserve and its child processes (node, replicas, Redis) print lands on
stderr; :func:`emit` writes the single JSON result line to the original stdout.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

_RESULT_OUT = os.fdopen(os.dup(1), "w", buffering=1)
sys.stdout.flush()
os.dup2(2, 1)  # children inherit fd 1 and now write to stderr

def free_port() -> int:
    """A TCP port nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Every benchmark's gateway gets a port of its own, so runs never collide on 8000.
os.environ.setdefault("MQSERVE_HTTP_PORT", str(free_port()))

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
log = logging.getLogger("bench")


def emit(benchmark: str, **fields: Any) -> None:
    """Print the one JSON result line on the real stdout."""
    _RESULT_OUT.write(json.dumps({"benchmark": benchmark, **fields}) + "\n")
    _RESULT_OUT.flush()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of already sorted values, linear interpolation."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_stats(seconds: Sequence[float], prefix: str = "") -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds, keys like ``{prefix}p50_ms``."""
    ms = sorted(s * 1000.0 for s in seconds)
    stats = {f"p{q}_ms": percentile(ms, q) for q in (50, 90, 99)}
    stats["mean_ms"] = sum(ms) / len(ms) if ms else float("nan")
    return {prefix + k: round(v, 3) for k, v in stats.items()}


def chain_app() -> Any:
    """The Adder -> Multiplier chain behind an Ingress, as in the Ray Serve docs."""
    from actors import serve
    from actors.handle import DeploymentHandle, DeploymentResponse

    @serve.deployment
    class Adder:
        def __init__(self, increment: int):
            self._increment = increment

        def __call__(self, val: int) -> int:
            return val + self._increment

    @serve.deployment
    class Multiplier:
        def __init__(self, multiple: int):
            self._multiple = multiple

        def __call__(self, val: int) -> int:
            return val * self._multiple

    @serve.deployment
    class Ingress:
        def __init__(self, adder: DeploymentHandle, multiplier: DeploymentHandle):
            self._adder = adder
            self._multiplier = multiplier

        async def __call__(self, input: int) -> int:
            adder_response: DeploymentResponse = self._adder.remote(input)
            multiplier_response: DeploymentResponse = self._multiplier.remote(adder_response)
            return await multiplier_response

    return Ingress.bind(Adder.bind(increment=1), Multiplier.bind(multiple=2))
