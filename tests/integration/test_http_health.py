"""``/-/healthz`` and ``/-/routes`` as Ray Serve's proxy answers them: not ready (503)
until the route table has a route, then "success" and ``{route_prefix: app_name}``."""

from __future__ import annotations

import httpx

from actors import serve
from tests.cluster import cluster_on, poll

NOT_READY = "Route table is not populated yet."


@serve.deployment
class Hello:
    def __call__(self) -> str:
        return "hello"


def test_healthz_and_routes_are_503_until_a_route_exists(redis_url: str) -> None:
    with cluster_on(redis_url, workers=1, gateway=True, prefix="hz") as (_, port):
        base = f"http://127.0.0.1:{port}"
        # Given a gateway of a namespace without applications
        for path in ("/-/healthz", "/-/routes"):
            r = httpx.get(base + path)
            assert (r.status_code, r.text) == (503, NOT_READY), path
        # And an application without a route, which does not count
        serve.run(Hello.bind(), name="hidden", route_prefix=None)
        assert (httpx.get(base + "/-/healthz").status_code, httpx.get(base + "/-/routes").status_code) == (503, 503)
        # When an application with a route runs
        serve.run(Hello.bind(), name="hello", route_prefix="/hello")
        # Then the gateway is healthy and lists the routes in Ray's shape
        poll(lambda: httpx.get(base + "/-/healthz").status_code == 200, what="healthz to answer 200")
        assert httpx.get(base + "/-/healthz").text == "success"
        r = httpx.get(base + "/-/routes")
        assert (r.status_code, r.json()) == (200, {"/hello": "hello"})
        # And it stays ready when the application goes, as Ray's proxy does
        serve.delete("hello")
        assert httpx.get(base + "/-/healthz").status_code == 200
