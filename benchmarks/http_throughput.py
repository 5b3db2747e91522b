"""Requests per second through the HTTP gateway with a fixed number of open connections.

The Ray Serve docs' Hello deployment (``POST {"name": "x"}`` in, ``Hello x!`` out)
behind the gateway. The load comes from ``wrk`` when it is on PATH (a Lua script sets
the POST body and content type; ``--latency`` gives the percentiles), otherwise from an
asyncio client with ``httpx.AsyncClient`` (that many workers on keep-alive connections).
The JSON line says which client ran.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import emit, free_port, latency_stats, log
from starlette.requests import Request

from actors import serve

logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every request at INFO

BODY = '{"name": "x"}'
EXPECTED = "Hello x!"

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = '{"name": "x"}'
wrk.headers["Content-Type"] = "application/json"
"""


@serve.deployment
class Hello:
    async def __call__(self, request: Request) -> str:
        name = (await request.json())["name"]
        return f"Hello {name}!"


def wait_for_route(url: str, timeout_s: float = 30.0) -> None:
    """serve.run returns once the replicas run; the gateway learns the route just after."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last: Any = None
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            try:
                r = client.post(url, content=BODY, headers={"content-type": "application/json"})
                if r.status_code == 200 and r.text == EXPECTED:
                    return
                last = f"{r.status_code} {r.text[:200]!r}"
            except httpx.HTTPError as e:
                last = repr(e)
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer {EXPECTED!r} within {timeout_s} s; last: {last}")


# ---------------------------------------------------------------------- wrk

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"cannot read wrk duration {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    """Requests/s, total requests, latency percentiles and errors from wrk's report."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in ([\d.]+\w+),", out)
    if not rps or not total:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    result: dict[str, Any] = {
        "requests_per_s": round(float(rps.group(1)), 1),
        "requests": int(total.group(1)),
        "window_s": round(_ms(total.group(2)) / 1000.0, 3),
    }
    for q, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", out, re.M):
        result[f"p{q}_ms"] = round(_ms(value), 3)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["errors"] = int(non2xx.group(1)) if non2xx else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = sum(int(x) for x in sock.groups()) if sock else 0
    return result


def run_wrk(wrk: str, url: str, connections: int, threads: int, seconds: int, script: str,
            latency: bool = True) -> dict[str, Any]:
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", script]
    if latency:
        cmd.append("--latency")
    cmd.append(url)
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    log.info("wrk output:\n%s%s", proc.stdout, proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {proc.stderr}")
    return parse_wrk(proc.stdout)


def measure_wrk(wrk: str, url: str, connections: int, threads: int, warmup_s: int,
                seconds: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT)
        script = f.name
    try:
        if warmup_s > 0:
            run_wrk(wrk, url, connections, threads, warmup_s, script, latency=False)
        return run_wrk(wrk, url, connections, threads, seconds, script)
    finally:
        os.unlink(script)


# -------------------------------------------------------------------- httpx

async def measure_httpx(url: str, connections: int, warmup_s: float, seconds: float) -> dict[str, Any]:
    """One ``httpx.AsyncClient`` (one keep-alive connection) per worker: a single client's
    pool shared by many workers costs the caller several ms of CPU per request."""
    try:
        import sniffio  # noqa: F401
    except ImportError:
        # httpcore tries `import sniffio` on every request; without it each try searches
        # sys.path again. None in sys.modules makes the failing import immediate.
        sys.modules["sniffio"] = None  # type: ignore[assignment]
    import httpx

    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    completed = 0
    errors = 0
    socket_errors = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    deadline = measure_from + seconds

    async def worker() -> None:
        nonlocal completed, errors, socket_errors
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
            while True:
                t0 = time.perf_counter()
                if t0 >= deadline:
                    return
                try:
                    r = await client.post(url, content=BODY, headers=headers)
                    ok = 200 <= r.status_code < 300
                except httpx.HTTPError:
                    t1 = time.perf_counter()
                    if measure_from <= t1 <= deadline:
                        socket_errors += 1
                    continue
                t1 = time.perf_counter()
                if t0 >= measure_from and t1 <= deadline:
                    latencies.append(t1 - t0)
                if measure_from <= t1 <= deadline:
                    completed += 1
                    if not ok:
                        errors += 1

    await asyncio.gather(*(worker() for _ in range(connections)))
    stats = latency_stats(latencies)
    return {"requests_per_s": round(completed / seconds, 1), "requests": completed, "window_s": seconds,
            "p50_ms": stats["p50_ms"], "p90_ms": stats["p90_ms"], "p99_ms": stats["p99_ms"],
            "errors": errors, "socket_errors": socket_errors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--connections", type=int, default=64, help="concurrent clients (open connections)")
    p.add_argument("--seconds", type=int, default=10, help="measured window")
    p.add_argument("--warmup", type=int, default=2, help="warm-up seconds before the window")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--max-ongoing", type=int, default=128, help="max_ongoing_requests per replica")
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--client", choices=("auto", "wrk", "httpx"), default="auto",
                   help="load generator; auto = wrk if on PATH, else httpx")
    args = p.parse_args()

    wrk = shutil.which("wrk") if args.client in ("auto", "wrk") else None
    if args.client == "wrk" and wrk is None:
        p.error("--client wrk: wrk is not on PATH")
    client = "wrk" if wrk else "httpx"

    port = free_port()
    os.environ["MQSERVE_HTTP_PORT"] = str(port)
    url = f"http://127.0.0.1:{port}/"
    app = Hello.options(num_replicas=args.replicas, max_ongoing_requests=args.max_ongoing).bind()
    try:
        serve.run(app, route_prefix="/")
        wait_for_route(url)
        log.info("%s: %d connections for %d s (+%d s warm-up) against %s", client, args.connections,
                 args.seconds, args.warmup, url)
        if wrk:
            result = measure_wrk(wrk, url, args.connections, args.threads, args.warmup, args.seconds)
        else:
            result = asyncio.run(measure_httpx(url, args.connections, args.warmup, args.seconds))
    finally:
        serve.shutdown()
    params: dict[str, Any] = {"client": client, "connections": args.connections,
                              "replicas": args.replicas, "max_ongoing_requests": args.max_ongoing,
                              "seconds": args.seconds, "warmup_s": args.warmup}
    if wrk:
        params["threads"] = args.threads
    emit("http_throughput", requests_per_s=result["requests_per_s"], p50_ms=result.get("p50_ms"),
         p99_ms=result.get("p99_ms"), errors=result["errors"], socket_errors=result["socket_errors"],
         requests=result["requests"], **params)


if __name__ == "__main__":
    main()
