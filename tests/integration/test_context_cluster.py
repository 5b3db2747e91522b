"""Issue 13 in cluster mode (workers and a gateway as separate processes): replica ranks
and world size on two workers, and request ids along a chain over HTTP."""

from __future__ import annotations

import os
import signal

import httpx

from actors import serve
from actors.handle import DeploymentHandle
from tests.cluster import cluster_on, poll


@serve.deployment(num_replicas=2, max_request_retries=2)  # a killed replica's call runs again
class Shard:
    def __init__(self) -> None:
        # The context exists before the constructor runs, as in Ray.
        self.rank_at_init = serve.get_replica_context().rank.rank

    def __call__(self) -> dict[str, object]:
        ctx = serve.get_replica_context()
        return {"rank": ctx.rank.rank, "node_rank": ctx.rank.node_rank, "local_rank": ctx.rank.local_rank,
                "world_size": ctx.world_size, "tag": ctx.replica_tag, "pid": os.getpid(),
                "at_init": self.rank_at_init}


@serve.deployment
class Leaf:
    def __call__(self) -> str:
        return serve.context._serve_request_context.get().request_id


@serve.deployment
class Ingress:
    def __init__(self, leaf: DeploymentHandle) -> None:
        self.leaf = leaf

    async def __call__(self) -> list[str]:
        mine = serve.context._serve_request_context.get().request_id
        return [mine, await self.leaf.remote(), await self.leaf.remote()]


def test_request_ids_follow_a_chain_through_the_gateway(redis_url: str) -> None:
    with cluster_on(redis_url, gateway=True, prefix="rid") as (_, port):
        serve.run(Ingress.bind(Leaf.bind()), name="rid", route_prefix="/rid")
        r = httpx.get(f"http://127.0.0.1:{port}/rid", headers={"X-Request-Id": "trace-7"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "trace-7"
        assert r.json() == ["trace-7"] * 3
        r = httpx.get(f"http://127.0.0.1:{port}/rid")
        assert r.json() == [r.headers["x-request-id"]] * 3
        # Errors carry the id too (the gateway adds it to whatever it answers)
        missing = httpx.get(f"http://127.0.0.1:{port}/rid", headers={"X-Request-Id": "t-8"})
        assert missing.headers["x-request-id"] == "t-8"


def test_ranks_on_two_workers_stay_distinct_through_replacement_and_upgrade(redis_url: str) -> None:
    with cluster_on(redis_url, workers=2, prefix="rank"):
        handle = serve.run(Shard.bind(), name="shards")

        def replicas() -> dict[str, dict[str, object]]:
            seen: dict[str, dict[str, object]] = {}
            for _ in range(40):
                got = handle.remote().result()
                seen[str(got["tag"])] = got
                if len(seen) == 2:
                    break
            return seen

        # Two replicas, one per worker: ranks 0 and 1 of 2, node ranks 0 and 1
        first = poll(lambda: r if len(r := replicas()) == 2 else None, what="both replicas to answer")
        assert sorted(r["rank"] for r in first.values()) == [0, 1]
        assert sorted(r["node_rank"] for r in first.values()) == [0, 1]
        assert all(r["world_size"] == 2 and r["local_rank"] == 0 and r["at_init"] == r["rank"]
                   for r in first.values())
        # When one replica dies, its replacement takes its rank; the other keeps its own
        victim = next(r for r in first.values() if r["rank"] == 1)
        os.kill(int(victim["pid"]), signal.SIGKILL)

        def replaced() -> dict[str, dict[str, object]] | None:
            now = replicas()
            return now if len(now) == 2 and victim["tag"] not in now else None

        after = poll(replaced, what="the replacement replica")
        assert {r["tag"]: r["rank"] for r in after.values() if r["tag"] in first} == {
            tag: r["rank"] for tag, r in first.items() if tag != victim["tag"]}
        assert sorted(r["rank"] for r in after.values()) == [0, 1]
        # An upgrade starts new replicas beside the old ones (ranks stay distinct); once
        # steady, ranks are 0..N-1 again, and a running replica hears its new rank
        handle = serve.run(Shard.options(num_replicas=3).bind(), name="shards")

        def all_three() -> list[tuple[object, object]] | None:
            seen: dict[str, dict[str, object]] = {}
            for _ in range(60):
                got = handle.remote().result()
                seen[str(got["tag"])] = got
            ranks = sorted((r["rank"], r["world_size"]) for r in seen.values())
            return ranks if ranks == [(0, 3), (1, 3), (2, 3)] else None

        poll(all_three, what="ranks 0..2 of 3 after the upgrade")
