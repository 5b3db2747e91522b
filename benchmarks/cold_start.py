"""Time from a fresh interpreter's first line to the first answer of the 3-deployment chain app.

The parent spawns ``python cold_start.py --child`` --runs times; each child records
``time.time()`` first, imports mqserve, runs the app, calls it once, shuts down and
prints the elapsed seconds as JSON. The parent reports each run and the median.
"""

import time

_T0 = time.time()  # the child's clock starts here, before any import

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402


def child() -> None:
    from _common import chain_app, emit

    from actors import serve

    try:
        answer = serve.run(chain_app()).remote(5).result()
        elapsed = time.time() - _T0
    finally:
        serve.shutdown()
    if answer != 12:
        raise SystemExit(f"chain answered {answer!r}, expected 12")
    emit("cold_start_child", elapsed_s=elapsed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child()
        return

    from _common import emit, log

    runs = []
    for i in range(args.runs):
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child"],
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=300, check=True)
        elapsed = json.loads(proc.stdout.decode().strip().splitlines()[-1])["elapsed_s"]
        log.info("run %d: %.3f s", i + 1, elapsed)
        runs.append(round(elapsed, 3))
    emit("cold_start", runs=args.runs, runs_s=runs, median_s=round(statistics.median(runs), 3),
         app="Ingress -> Adder -> Multiplier")


if __name__ == "__main__":
    main()
