"""Sequential handle round trips to a no-op deployment, sync (.result()) and async (await).

``--payload-bytes N`` sends N bytes as the argument (and gets them back) instead of a
small int: the cost of a call as its payload grows.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import emit, latency_stats, log

from actors import serve


@serve.deployment
class Noop:
    def __call__(self, x=None):
        return x


def sync_round_trips(handle, n: int, payload: bytes | None = None) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        handle.remote(i if payload is None else payload).result()
        out.append(time.perf_counter() - t0)
    return out


async def async_round_trips(handle, n: int, payload: bytes | None = None) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await handle.remote(i if payload is None else payload)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=3000, help="measured calls per mode")
    p.add_argument("--warmup", type=int, default=300, help="warm-up calls per mode")
    p.add_argument("--payload-bytes", type=int, default=0, help="bytes sent and returned per call (0: an int)")
    args = p.parse_args()
    payload = bytes(args.payload_bytes) if args.payload_bytes else None

    handle = serve.run(Noop.bind())
    try:
        sync_round_trips(handle, args.warmup, payload)
        log.info("sync: %d calls", args.n)
        sync = sync_round_trips(handle, args.n, payload)

        async def run_async() -> list[float]:
            await async_round_trips(handle, args.warmup, payload)
            return await async_round_trips(handle, args.n, payload)

        log.info("async: %d calls", args.n)
        asyn = asyncio.run(run_async())
    finally:
        serve.shutdown()
    emit("handle_latency", n=args.n, warmup=args.warmup, payload_bytes=args.payload_bytes,
         **latency_stats(sync, "sync_"), **latency_stats(asyn, "async_"))


if __name__ == "__main__":
    main()
