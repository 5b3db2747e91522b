"""The dashboard's own cost: page load time, and the gateway's CPU while a page is open.

Local mode (a private Redis, the driver's node and gateway). Two apps: ``shop`` (an
ingress ``Front`` calling ``Model``, 2 replicas, and ``Slow``, a few ms) and ``search``
(one deployment). Requests come from ``--clients`` threads for ``--load-s`` seconds at a
varying rate, with an occasional failing one, so the page has figures and errors to
show. Then a headless chromium (Debian's, through Playwright: see tests/browser.py)
opens ``/-/dashboard``, and the load stops.

Measured, with no other load: the gateway process's CPU time (``/proc/{pid}/stat``,
all its threads) over ``--measure-s`` seconds with the page open (polling every
second), then over as long with no page, as a baseline (heartbeats, the controller
loop if it leads). Reports ``load_event_ms`` and ``first_render_ms`` (the browser's
navigation timing, and the page's mark when the first JSON was drawn),
``gateway_cpu_page`` and ``gateway_cpu_idle`` (CPU seconds per wall second, 0.05 is 5%
of one core) and their difference, ``page_cost``. ``--screenshot PATH`` saves the page.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import threading
import time
from typing import Any

from _common import emit, log

from actors import serve
from actors.handle import DeploymentHandle

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.browser import NO_CHROMIUM, chromium, find_chromium  # noqa: E402


@serve.deployment(num_replicas=2)
class Model:
    def __call__(self, x: str) -> str:
        if x == "bad":
            raise ValueError("unsupported input: bad")
        return x.upper()


@serve.deployment
class Slow:
    async def __call__(self, x: str) -> str:
        import asyncio

        await asyncio.sleep(random.uniform(0.002, 0.02))
        return x


@serve.deployment
class Front:
    def __init__(self, model: DeploymentHandle, slow: DeploymentHandle) -> None:
        self.model, self.slow = model, slow

    async def __call__(self, request: Any) -> str:
        x = request.query_params.get("x", "ok")
        return str(await self.model.remote(await self.slow.remote(x)))


@serve.deployment
def Search(request: Any) -> dict[str, Any]:
    return {"hits": len(request.query_params.get("q", ""))}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_share(pid: int, seconds: float) -> float:
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def load(base: str, stop: threading.Event, started: float) -> None:
    import httpx

    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            # A rate that swells and ebbs, so the sparklines have a shape.
            wave = 0.5 + 0.5 * math.sin((time.monotonic() - started) / 8)
            try:
                if random.random() < 0.002:
                    client.get(f"{base}/shop", params={"x": "bad"})
                elif random.random() < 0.3:
                    client.get(f"{base}/search", params={"q": "mqserve"})
                else:
                    client.get(f"{base}/shop", params={"x": "ok"})
            except httpx.HTTPError:
                pass
            stop.wait(0.002 + 0.03 * (1 - wave))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--load-s", type=float, default=30.0, help="seconds of load before measuring")
    p.add_argument("--clients", type=int, default=4, help="threads sending requests")
    p.add_argument("--measure-s", type=float, default=10.0, help="seconds of each CPU measurement")
    p.add_argument("--screenshot", default=None, help="save a screenshot of the page there")
    args = p.parse_args()
    path = find_chromium()
    if path is None:
        sys.exit(NO_CHROMIUM)
    serve.run(Front.bind(Model.bind(), Slow.bind()), name="shop", route_prefix="/shop")
    serve.run(Search.bind(), name="search", route_prefix="/search")
    base = f"http://127.0.0.1:{os.environ['MQSERVE_HTTP_PORT']}"
    gateway_pid = int(next(iter(serve.status().gateways.values()))["pid"])
    stop = threading.Event()
    threads = [threading.Thread(target=load, args=(base, stop, time.monotonic()), daemon=True)
               for _ in range(args.clients)]
    try:
        for t in threads:
            t.start()
        log.info("load for %.0f s", args.load_s)
        time.sleep(args.load_s)
        with chromium(path) as browser:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"{base}/-/dashboard")
            page.wait_for_function("Number(document.body.dataset.updates || 0) >= 1", timeout=10000)
            nav = page.evaluate("performance.getEntriesByType('navigation')[0].toJSON()")
            first = page.evaluate("performance.getEntriesByName('mqserve-first-render')[0].startTime")
            page.wait_for_function("Number(document.body.dataset.updates || 0) >= 3", timeout=10000)
            if args.screenshot:
                page.screenshot(path=args.screenshot, full_page=True)
            stop.set()
            for t in threads:
                t.join(timeout=15)
            time.sleep(2)  # the last requests' figures flushed, the gateway quiet
            seen = page.evaluate("Number(document.body.dataset.updates)")
            with_page = cpu_share(gateway_pid, args.measure_s)
            polls = page.evaluate("Number(document.body.dataset.updates)") - seen
            page.close()
        idle = cpu_share(gateway_pid, args.measure_s)
    finally:
        stop.set()
        serve.shutdown()
    emit("dashboard", load_event_ms=round(nav["loadEventEnd"], 1), first_render_ms=round(first, 1),
         gateway_cpu_page=round(with_page, 4), gateway_cpu_idle=round(idle, 4),
         page_cost=round(with_page - idle, 4), page_updates=polls, measure_s=args.measure_s,
         load_s=args.load_s, clients=args.clients)


if __name__ == "__main__":
    main()
