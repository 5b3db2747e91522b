"""The gateway's request timeout is the deadline of the request it sends (issue 14,
part 2): it travels down the chain, and the client gets 408 near it."""

from __future__ import annotations

import gc
import time

import httpx

from actors import serve
from actors.handle import DeploymentHandle
from tests.cluster import cluster_on, poll
from tests.integration.test_deadlines import Blocked, Middle


def test_the_gateway_timeout_is_the_requests_deadline(redis_url: str) -> None:
    """HTTP: the gateway's request timeout travels down the chain; 408 near it; the
    blocked call never runs, is counted as expired in /metrics; nothing left in Redis."""
    with cluster_on(redis_url, gateway=True, prefix="dlh", MQSERVE_HTTP_TIMEOUT_S="2") as (cluster, port):
        @serve.deployment
        class Front:
            def __init__(self, mid: DeploymentHandle) -> None:
                self.mid = mid

            async def __call__(self, request) -> int:
                return await self.mid.remote(int(request.query_params["x"]))

        serve.run(Front.bind(Middle.bind(Blocked.bind())), name="deadlines", route_prefix="/")
        blocked = serve.get_deployment_handle("Blocked", "deadlines")
        url = f"http://127.0.0.1:{port}/"
        assert httpx.get(url, params={"x": 0}, timeout=30).json() == 0
        idle = {k for k in cluster.namespace_keys() if not k.endswith(b":alive") and b":counts:" not in k}
        hold = blocked.hold.remote(5)
        start = time.monotonic()
        answer = httpx.get(url, params={"x": 1}, timeout=30)
        assert answer.status_code == 408, answer.text
        assert 1.8 < time.monotonic() - start < 3.5
        assert hold.result(timeout_s=30) == "held"
        assert blocked.remote(2).result(timeout_s=30) == 2
        assert blocked.log.remote().result(timeout_s=30) == [0, 2]
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        assert 'mqserve_deployment_expired_requests_total{application="deadlines",deployment="Blocked"}' in metrics
        del hold
        gc.collect()
        poll(lambda: not ({k for k in cluster.namespace_keys()
                           if not k.endswith(b":alive") and b":counts:" not in k} - idle),
             timeout_s=30, what="keys back to idle")
