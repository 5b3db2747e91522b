"""Background outcomes expire with MQSERVE_BACKGROUND_TTL_S, set for every process of a
cluster of its own (a module of its own: ``cluster_on`` connects this process's serve to
its cluster, which a module-scoped ``serve_instance`` would hold)."""

from __future__ import annotations

import time

from actors import serve
from actors.exceptions import RequestNotFoundError
from tests.cluster import cluster_on, poll


@serve.deployment
class Echo:
    def __call__(self, value: object) -> object:
        return value


def test_outcomes_expire_with_the_background_ttl(redis_url: str) -> None:
    with cluster_on(redis_url, prefix="bgt", MQSERVE_BACKGROUND_TTL_S="2") as (cluster, _):
        handle = serve.run(Echo.bind(), name="ttl", route_prefix=None)
        response = handle.options(background=True).remote("short")
        assert response.result(timeout_s=30) == "short"
        key = f"{cluster.namespace}:res:{response.request_id}"
        assert 0 < cluster.registry.redis.pttl(key) <= 2000
        assert serve.get_response(response.request_id).result(timeout_s=30) == "short"
        ended = time.monotonic()
        poll(lambda: _gone(response.request_id), timeout_s=10, what="the outcome to expire")
        assert time.monotonic() - ended > 1.0
        assert not cluster.registry.redis.exists(key)


def _gone(request_id: str) -> bool:
    try:
        serve.get_response(request_id)
    except RequestNotFoundError:
        return True
    return False
