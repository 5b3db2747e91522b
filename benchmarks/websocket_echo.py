"""WebSocket echo through the gateway: round trip of one message, and messages per second.

A FastAPI ``@app.websocket`` echo route on one replica (local mode: the driver's node
and gateway, a private Redis). For each ``--sockets`` count, that many clients (the
``websockets`` package, on this process's event loop) each send a message and wait for
its echo, ``--messages`` times; every round trip is timed. ``msgs_per_s`` counts echoed
messages over the run's wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from _common import emit, latency_stats, log
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect

from actors import serve

app = FastAPI()


@serve.deployment(max_ongoing_requests=128)
@serve.ingress(app)
class Echo:
    @app.websocket("/")
    async def echo(self, ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                await ws.send_text(await ws.receive_text())
        except WebSocketDisconnect:
            pass


async def run(url: str, sockets: int, messages: int, size: int) -> dict[str, Any]:
    payload = "x" * size
    times: list[float] = []

    async def client() -> None:
        async with connect(url, max_size=None) as ws:
            for _ in range(messages):
                start = time.perf_counter()
                await ws.send(payload)
                assert await ws.recv() == payload
                times.append(time.perf_counter() - start)

    async with connect(url) as warm:  # the replica's first connection pays for imports
        await warm.send("warm")
        await warm.recv()
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(sockets)))
    elapsed = time.perf_counter() - start
    return {**latency_stats(times), "msgs_per_s": round(len(times) / elapsed, 1), "messages": len(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sockets", default="1,16", help="comma-separated: concurrent sockets, one run each")
    p.add_argument("--messages", type=int, default=1000, help="round trips per socket")
    p.add_argument("--size", type=int, default=16, help="bytes per message")
    args = p.parse_args()
    serve.run(Echo.bind(), route_prefix="/")
    url = f"ws://127.0.0.1:{os.environ['MQSERVE_HTTP_PORT']}/"
    try:
        results = {}
        for n in (int(x) for x in args.sockets.split(",")):
            results[n] = asyncio.run(run(url, n, max(1, args.messages // n) if n > 16 else args.messages,
                                         args.size))
            log.info("%d sockets: %s", n, results[n])
    finally:
        serve.shutdown()
    emit("websocket_echo", sockets=results, size=args.size)


if __name__ == "__main__":
    main()
