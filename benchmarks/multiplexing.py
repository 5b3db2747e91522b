"""Model multiplexing: how many model loads 1,000 requests cost when requests for 4 models
come in random order to 2 replicas that keep 2 models each.

Each configuration deploys a fresh app (no model loaded), then sends ``--requests``
requests, ``--inflight`` at a time, each for a model drawn at random (seeded). A load
costs ``--load-ms`` (an ``asyncio.sleep`` in the ``@serve.multiplexed`` loader). Two ways
of sending: ``routed`` names the model with ``handle.options(multiplexed_model_id=)``, so
mqserve routes by model; ``unrouted`` passes the model id as an argument instead, so each
request goes to whichever replica is free, as it would without model-aware routing (the
baseline). Every load is counted, the first 4 included.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from typing import Any

from _common import emit, log

from actors import serve


@serve.deployment(num_replicas=2)
class Models:
    def __init__(self, load_s: float) -> None:
        self.load_s = load_s
        self.loads = 0

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> str:
        self.loads += 1
        await asyncio.sleep(self.load_s)
        return model_id

    async def __call__(self, model_id: str = "") -> tuple[int, int]:
        await self.get_model(model_id or serve.get_multiplexed_model_id())
        return os.getpid(), self.loads


async def send(handle: Any, models: list[str], inflight: int, routed: bool) -> tuple[int, float]:
    """Send one request per entry of ``models``; returns (loads, seconds)."""
    pending = iter(models)
    loads: dict[int, int] = {}  # replica pid -> its load count, as its replies say

    async def worker() -> None:
        for model in pending:
            call = handle.options(multiplexed_model_id=model).remote() if routed else handle.remote(model)
            pid, count = await call
            loads[pid] = max(loads.get(pid, 0), count)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return sum(loads.values()), time.perf_counter() - start


def run_one(args: argparse.Namespace, inflight: int, routed: bool) -> dict[str, Any]:
    name = f"mux-{'routed' if routed else 'unrouted'}-{inflight}"
    app = Models.options(max_ongoing_requests=args.max_ongoing).bind(args.load_ms / 1000)
    handle = serve.run(app, name=name, route_prefix=f"/{name}")
    rng = random.Random(args.seed)
    models = [rng.choice("abcd") for _ in range(args.requests)]
    try:
        loads, seconds = asyncio.run(send(handle, models, inflight, routed))
    finally:
        serve.delete(name)
    log.info("%s: %d loads for %d requests in %.2f s", name, loads, args.requests, seconds)
    return {"loads": loads, "loads_per_1000": round(loads * 1000 / args.requests, 1),
            "calls_per_s": round(args.requests / seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--inflight", default="1,4,8", help="comma-separated: requests in flight, one run each")
    p.add_argument("--load-ms", type=float, default=10.0, help="cost of one model load")
    p.add_argument("--max-ongoing", type=int, default=5, help="max_ongoing_requests per replica (Ray's default)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--no-baseline", action="store_true", help="skip the unrouted runs")
    args = p.parse_args()
    inflights = [int(n) for n in args.inflight.split(",")]
    serve.start()
    try:
        routed = {n: run_one(args, n, routed=True) for n in inflights}
        unrouted = {} if args.no_baseline else {n: run_one(args, n, routed=False) for n in inflights}
    finally:
        serve.shutdown()
    emit("multiplexing", routed=routed, unrouted=unrouted, requests=args.requests, models=4, replicas=2,
         max_num_models_per_replica=2, max_ongoing_requests=args.max_ongoing, load_ms=args.load_ms,
         seed=args.seed)


if __name__ == "__main__":
    main()
