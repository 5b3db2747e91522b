"""Time from ``serve.run(chain app)`` to its first answer, on a cluster whose workers are already up.

Starts a private Redis (TCP, free port) and ``--workers`` ``mqserve worker`` processes,
waits until they are registered and one holds the controller lease, and connects this
driver (``serve.start(redis_url=...)``): none of that is timed. Then, ``--runs`` times:
``serve.run`` of cold_start.py's Ingress -> Adder -> Multiplier app under a new name,
one call through the returned handle (checked: (5+1)*2 == 12), the elapsed seconds;
then the app is deleted and the run waits until its replica processes have exited and
the workers are idle again. The time covers pickling the app, the controller placing 3
replicas, the workers starting 3 fresh replica processes (imports, constructor), the
driver seeing them RUNNING, and the first round trip through the chain.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from _cluster import BenchCluster
from _common import chain_app, emit, log

from actors import serve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--settle", type=float, default=1.0, help="seconds of idle before each run")
    args = p.parse_args()

    runs: list[float] = []
    run_s: list[float] = []  # until serve.run returned (replicas RUNNING), without the first call
    placement: dict[str, int] = {}
    with BenchCluster(workers=args.workers) as cluster:
        redis_kind = cluster.redis_kind
        for i in range(args.runs):
            name = f"cold{i + 1}"
            time.sleep(args.settle)
            t0 = time.perf_counter()
            handle = serve.run(chain_app(), name=name, route_prefix=None)
            run_s.append(round(time.perf_counter() - t0, 3))
            answer = handle.remote(5).result()
            elapsed = time.perf_counter() - t0
            if answer != 12:
                raise SystemExit(f"chain answered {answer!r}, expected 12")
            placed = {w: 0 for w in cluster.workers}
            for dep in ("Ingress", "Adder", "Multiplier"):
                for w, n in cluster.placement(name, dep).items():
                    placed[w] += n
            placement = {w.rsplit("-", 1)[-1]: n for w, n in placed.items()}
            log.info("run %d: %.3f s (replicas per worker %s)", i + 1, elapsed, placement)
            runs.append(round(elapsed, 3))
            serve.delete(name)
            cluster.wait_idle()
    emit("cold_deploy", workers=args.workers, runs=args.runs, runs_s=runs,
         p50_s=round(statistics.median(runs), 3), min_s=min(runs), max_s=max(runs),
         serve_run_returned_s=run_s,
         placement=placement, app="Ingress -> Adder -> Multiplier", target_s=1.5, redis=redis_kind,
         cores=os.cpu_count())


if __name__ == "__main__":
    main()
