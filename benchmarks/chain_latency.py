"""Sequential sync calls through Ingress -> Adder -> Multiplier (the Ray Serve docs example)."""

from __future__ import annotations

import argparse
import time

from _common import chain_app, emit, latency_stats, log

from actors import serve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=2000, help="measured calls")
    p.add_argument("--warmup", type=int, default=200, help="warm-up calls")
    args = p.parse_args()

    handle = serve.run(chain_app())
    try:
        answer = handle.remote(5).result()
        if answer != 12:
            raise SystemExit(f"chain answered {answer!r}, expected (5+1)*2 == 12")
        for _ in range(args.warmup):
            handle.remote(5).result()
        log.info("chain: %d calls", args.n)
        latencies = []
        for _ in range(args.n):
            t0 = time.perf_counter()
            handle.remote(5).result()
            latencies.append(time.perf_counter() - t0)
    finally:
        serve.shutdown()
    emit("chain_latency", n=args.n, warmup=args.warmup, answer=answer, **latency_stats(latencies))


if __name__ == "__main__":
    main()
