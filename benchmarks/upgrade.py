"""Failed calls during an in-place upgrade under a steady rate of calls."""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import emit, log

from actors import serve


def build(tag: str):
    @serve.deployment(num_replicas=2)
    class Versioned:
        def __call__(self) -> str:
            return tag

    return Versioned.bind()


async def drive(handle, rate: float, seconds: float, upgrade_at: float) -> dict:
    results: list[str] = []
    failures: list[str] = []
    tasks = []
    loop = asyncio.get_running_loop()

    async def one() -> None:
        try:
            results.append(await handle.remote())
        except Exception as e:  # noqa: BLE001 - every failure is counted
            failures.append(type(e).__name__)

    start = loop.time()
    upgraded = None
    i = 0
    while (now := loop.time()) - start < seconds:
        if upgraded is None and now - start >= upgrade_at:
            t0 = time.monotonic()
            upgraded = loop.run_in_executor(None, lambda: serve.run(build("new"), name="upgrade", route_prefix=None))
            upgraded.add_done_callback(lambda _, t0=t0: log.info("upgrade took %.2f s", time.monotonic() - t0))
        tasks.append(asyncio.ensure_future(one()))
        i += 1
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
    await asyncio.gather(*tasks)
    if upgraded is not None:
        await upgraded
    return {"calls": len(tasks), "failed": len(failures), "answered_old": results.count("old"),
            "answered_new": results.count("new"), "failure_kinds": sorted(set(failures))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rate", type=float, default=200.0, help="calls per second")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--upgrade-at", type=float, default=2.0)
    args = p.parse_args()
    handle = serve.run(build("old"), name="upgrade", route_prefix=None)
    try:
        result = asyncio.run(drive(handle, args.rate, args.seconds, args.upgrade_at))
    finally:
        serve.shutdown()
    emit("upgrade", **result, rate=args.rate, seconds=args.seconds, replicas=2)


if __name__ == "__main__":
    main()
