"""The cost of ``background=True``: sequential round trips (remote + result) of a plain
call and of a background call to the same no-op deployment, alternated in blocks so
both see the same machine; and the HTTP ``Prefer: respond-async`` submit rate (202
answers per second, 16 requests in flight).

A background call costs one round trip more on the caller (it reads its kept result
with ``bg_read.lua`` instead of getting a reply pushed) and one on the replica (its
status record says RUNNING before user code runs); the rest are the same round trips
running other scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time

import httpx
from _common import emit, latency_stats, log

from actors import serve

logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would cost the client


@serve.deployment(max_ongoing_requests=16)
class Noop:
    async def __call__(self, x=None):
        return "ok" if not isinstance(x, (int, type(None))) else x


def round_trips(handle, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        handle.remote(i).result()
        out.append(time.perf_counter() - t0)
    return out


async def submit_rate(base: str, n: int, in_flight: int, prefer: str = "respond-async") -> tuple[float, int]:
    """``n`` POSTs, ``in_flight`` at a time: answers per second (202s with ``prefer``), and
    how many were accepted. With ``prefer=""`` the same requests in the foreground, for
    comparison on the same client (an httpx client costs far more CPU than wrk)."""
    accepted = 0
    headers = {"Prefer": prefer} if prefer else {}
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        queue = iter(range(n))

        async def worker() -> None:
            nonlocal accepted
            for _ in queue:
                r = await client.post("/", content=b"x", headers=headers)
                accepted += r.status_code == (202 if prefer else 200)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return accepted / (time.perf_counter() - t0), accepted


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=2000, help="measured calls per kind")
    p.add_argument("--block", type=int, default=200, help="calls per block (kinds alternate by block)")
    p.add_argument("--http-n", type=int, default=3000, help="respond-async requests")
    p.add_argument("--in-flight", type=int, default=16)
    args = p.parse_args()

    handle = serve.run(Noop.bind())
    background = handle.options(background=True)
    try:
        round_trips(handle, 300)
        round_trips(background, 300)
        plain: list[float] = []
        bg: list[float] = []
        log.info("plain and background calls: %d each, in blocks of %d", args.n, args.block)
        while len(plain) < args.n:
            plain += round_trips(handle, args.block)
            bg += round_trips(background, args.block)
        base = f"http://127.0.0.1:{os.environ['MQSERVE_HTTP_PORT']}"
        asyncio.run(submit_rate(base, 300, args.in_flight))  # warm-up
        log.info("respond-async: %d requests, %d in flight", args.http_n, args.in_flight)
        rate, accepted = asyncio.run(submit_rate(base, args.http_n, args.in_flight))
        log.info("the same in the foreground")
        plain_rate, _ = asyncio.run(submit_rate(base, args.http_n, args.in_flight, prefer=""))
    finally:
        serve.shutdown()
    emit("background", n=len(plain), **latency_stats(plain, "plain_"), **latency_stats(bg, "background_"),
         http_respond_async_per_s=round(rate, 1), http_accepted=accepted, http_plain_per_s=round(plain_rate, 1),
         http_in_flight=args.in_flight)


if __name__ == "__main__":
    main()
