"""HTTP through the gateway: the seeds' ingress examples, request fidelity, errors."""

from __future__ import annotations

import json
import os
import time

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from actors import serve
from examples.hello import language_classifier
from tests.conftest import free_port


@pytest.fixture(scope="module")
def base_url(serve_instance) -> str:
    return f"http://127.0.0.1:{os.environ['MQSERVE_HTTP_PORT']}"


@serve.deployment
class MostBasicIngress:
    async def __call__(self, request: Request) -> str:
        name = (await request.json())["name"]
        return f"Hello {name}!"


@serve.deployment
class Mirror:
    """Returns what it saw of the request."""

    async def __call__(self, request: Request) -> dict:
        return {
            "method": request.method, "path": request.url.path, "root_path": request.scope["root_path"],
            "query": dict(request.query_params), "header": request.headers.get("x-test"),
            "body": (await request.body()).decode(),
        }


@serve.deployment
class Custom:
    def __call__(self, request: Request) -> Response:
        return Response(b"teapot", status_code=418, headers={"x-custom": "yes"}, media_type="text/x-tea")


@serve.deployment
class Failing:
    def __call__(self, request: Request) -> None:
        raise RuntimeError("secret internals")


@serve.deployment
class Slow:
    async def __call__(self, request: Request) -> str:
        import asyncio

        await asyncio.sleep(float(request.query_params.get("s", "2")))
        return "late"


@serve.deployment
class Ticker:
    def __call__(self, request: Request):
        for i in range(3):
            yield {"tick": i}
            time.sleep(0.3)


@serve.deployment
class QueryEcho:
    def __call__(self, request: Request) -> object:
        return request.query_params


@serve.deployment
class Pair:
    def __call__(self, request: Request) -> tuple:
        return ("a", 1, (2, 3))


@serve.deployment
class AsyncNoRequest:
    async def __call__(self) -> str:
        return "async method"


@serve.deployment
class SyncNoRequest:
    def __call__(self) -> str:
        return "sync method"


@serve.deployment
async def async_no_request() -> str:
    return "async function"


@serve.deployment
def sync_no_request() -> dict:
    return {"sync": "function"}


@serve.deployment
class NumpyValues:
    def __call__(self, request: Request) -> dict:
        import numpy as np

        return {"int": np.int64(3), "float": np.float32(0.5), "bool": np.bool_(True),
                "array": np.arange(3), "nested": [{"matrix": np.array([[1.5, 2.0], [3.0, 4.0]])}]}


def test_language_classifier_over_http(base_url: str) -> None:
    serve.run(language_classifier, name="hello", route_prefix="/hello")
    r = httpx.post(f"{base_url}/hello", json={"language": "spanish", "name": "Dora"})
    assert (r.status_code, r.text) == (200, "Hola Dora")
    assert r.headers["content-type"].startswith("text/plain")
    r = httpx.post(f"{base_url}/hello", json={"language": "french", "name": "Dora"})
    assert r.text == "Bonjour Dora"


def test_most_basic_ingress(base_url: str) -> None:
    serve.run(MostBasicIngress.bind(), name="basic", route_prefix="/basic")
    r = httpx.request("GET", f"{base_url}/basic", json={"name": "Corey"})
    assert r.text == "Hello Corey!"


def test_fastapi_ingress_with_method_routes(base_url: str) -> None:
    pytest.importorskip("fastapi")
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    fastapi_app = FastAPI()

    @serve.deployment
    @serve.ingress(fastapi_app)
    class FastAPIIngress:
        def __init__(self) -> None:
            self.greeting = "Hello"

        @fastapi_app.get("/{name}")
        async def say_hi(self, name: str) -> str:
            return PlainTextResponse(f"{self.greeting} {name}!")

        @fastapi_app.get("/json/{n}")
        def double(self, n: int) -> dict:
            return {"double": 2 * n}

    serve.run(FastAPIIngress.bind(), name="fast", route_prefix="/fast")
    assert httpx.get(f"{base_url}/fast/Corey").text == "Hello Corey!"
    assert httpx.get(f"{base_url}/fast/json/21").json() == {"double": 42}


def test_request_arrives_intact_and_json_goes_back(base_url: str) -> None:
    serve.run(Mirror.bind(), name="mirror", route_prefix="/mirror")
    r = httpx.put(f"{base_url}/mirror/a/b?x=1&y=two", content=b"payload", headers={"x-test": "hdr"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {"method": "PUT", "path": "/mirror/a/b", "root_path": "/mirror",
                        "query": {"x": "1", "y": "two"}, "header": "hdr", "body": "payload"}


def test_a_mapping_goes_out_as_a_json_object(base_url: str) -> None:
    # Given an ingress returning request.query_params, a Starlette multi-dict
    serve.run(QueryEcho.bind(), name="query", route_prefix="/query")
    # When a query repeats a key
    r = httpx.get(f"{base_url}/query?x=1&y=two&x=3")
    # Then it is a JSON object holding the last value of a repeated key, as dict() and Ray give
    assert (r.status_code, r.headers["content-type"]) == (200, "application/json")
    assert r.json() == {"x": "3", "y": "two"}


def test_a_tuple_goes_out_as_a_json_list(base_url: str) -> None:
    serve.run(Pair.bind(), name="pair", route_prefix="/pair")
    r = httpx.get(f"{base_url}/pair")
    assert (r.status_code, r.json()) == (200, ["a", 1, [2, 3]])


def test_an_ingress_without_parameters_is_called_without_the_request(base_url: str) -> None:
    # Given methods and functions, sync and async, that take no request
    for app in (AsyncNoRequest, SyncNoRequest, async_no_request, sync_no_request):
        serve.run(app.bind(), name=app.name, route_prefix=f"/{app.name}")
    # When each is reached over HTTP
    answers = [httpx.post(f"{base_url}/{name}", content=b"ignored")
               for name in ("AsyncNoRequest", "SyncNoRequest", "async_no_request", "sync_no_request")]
    # Then each is called without it, as in Ray Serve
    assert [(r.status_code, r.text) for r in answers] == [
        (200, "async method"), (200, "sync method"), (200, "async function"), (200, '{"sync":"function"}')]


def test_numpy_values_go_out_as_json_numbers_and_lists(base_url: str) -> None:
    pytest.importorskip("numpy")
    serve.run(NumpyValues.bind(), name="numpy", route_prefix="/numpy")
    r = httpx.get(f"{base_url}/numpy")
    assert r.status_code == 200, r.text
    assert r.json() == {"int": 3, "float": 0.5, "bool": True, "array": [0, 1, 2],
                        "nested": [{"matrix": [[1.5, 2.0], [3.0, 4.0]]}]}


def test_longest_prefix_wins_and_unknown_routes_are_404(base_url: str) -> None:
    serve.run(Mirror.bind(), name="mirror", route_prefix="/mirror")
    serve.run(Custom.bind(), name="deeper", route_prefix="/mirror/deep")
    assert httpx.get(f"{base_url}/mirror/deep/x").status_code == 418
    assert httpx.get(f"{base_url}/mirror/deeper").json()["path"] == "/mirror/deeper"
    r = httpx.get(f"{base_url}/nowhere")
    assert r.status_code == 404


def test_starlette_response_is_sent_as_is(base_url: str) -> None:
    serve.run(Custom.bind(), name="custom", route_prefix="/custom")
    r = httpx.get(f"{base_url}/custom")
    assert (r.status_code, r.content, r.headers["x-custom"]) == (418, b"teapot", "yes")
    assert r.headers["content-type"].startswith("text/x-tea")


def test_user_exception_is_a_short_500(base_url: str) -> None:
    serve.run(Failing.bind(), name="failing", route_prefix="/failing")
    r = httpx.get(f"{base_url}/failing")
    assert r.status_code == 500
    assert "secret internals" not in r.text and "Traceback" not in r.text
    # The gateway keeps serving.
    assert httpx.get(f"{base_url}/-/healthz").text == "success"


def test_generator_ingress_streams_items_as_they_come(base_url: str) -> None:
    serve.run(Ticker.bind(), name="ticker", route_prefix="/ticker")
    start = time.monotonic()
    arrivals = []
    with httpx.stream("GET", f"{base_url}/ticker") as r:
        for line in r.iter_lines():
            if line:
                arrivals.append((time.monotonic() - start, json.loads(line)))
    assert [item for _, item in arrivals] == [{"tick": 0}, {"tick": 1}, {"tick": 2}]
    assert arrivals[0][0] < arrivals[-1][0] - 0.4  # the first came before the generator ended


def test_routes_healthz_and_metrics(base_url: str) -> None:
    serve.run(MostBasicIngress.bind(), name="basic", route_prefix="/basic")
    httpx.request("GET", f"{base_url}/basic", json={"name": "M"})
    assert httpx.get(f"{base_url}/-/routes").json()["/basic"] == "basic"
    metrics = httpx.get(f"{base_url}/metrics").text
    assert 'mqserve_http_requests_total{application="basic",deployment="MostBasicIngress",status="200"}' in metrics
    assert 'mqserve_deployment_queued_requests{application="basic",deployment="MostBasicIngress"} 0' in metrics


@pytest.fixture
def strict_gateway(cluster, serve_instance):
    """A second gateway with a 0.5 s timeout and a 1 kB body limit."""
    port = free_port()
    cluster.add_gateway(port, env={"MQSERVE_HTTP_TIMEOUT_S": "0.5", "MQSERVE_MAX_BODY_BYTES": "1000"})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        cluster.stop_gateway(port)


def test_timeout_is_408_and_big_bodies_are_413(strict_gateway: str) -> None:
    serve.run(Slow.bind(), name="slow", route_prefix="/slow")
    serve.run(Mirror.bind(), name="mirror", route_prefix="/mirror")
    assert httpx.get(f"{strict_gateway}/slow?s=3", timeout=10).status_code == 408
    assert httpx.post(f"{strict_gateway}/mirror", content=b"x" * 2000).status_code == 413
    assert httpx.post(f"{strict_gateway}/mirror", content=b"x" * 500).json()["body"] == "x" * 500


def test_backpressure_is_503(base_url: str) -> None:
    @serve.deployment(max_ongoing_requests=1, max_queued_requests=1)
    class Narrow:
        async def __call__(self, request: Request) -> str:
            import asyncio

            await asyncio.sleep(0.5)
            return "ok"

    serve.run(Narrow.bind(), name="narrow", route_prefix="/narrow")

    async def burst() -> list[int]:
        import asyncio

        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(*[client.get(f"{base_url}/narrow") for _ in range(6)])
        return [r.status_code for r in responses]

    import asyncio

    codes = asyncio.run(burst())
    assert codes.count(200) >= 1 and codes.count(503) >= 1, codes
    assert set(codes) <= {200, 503}


@serve.deployment
class NeverStarts:
    def __init__(self) -> None:
        raise OSError("no GPU")


def test_a_deployment_that_failed_to_start_is_503(base_url: str) -> None:
    with pytest.raises(OSError):
        serve.run(NeverStarts.bind(), name="never", route_prefix="/never")
    deadline = time.monotonic() + 10
    r = httpx.get(f"{base_url}/never")
    while r.status_code != 503 and time.monotonic() < deadline:  # the controller marks it failed
        time.sleep(0.05)
        r = httpx.get(f"{base_url}/never", timeout=2)
    assert r.status_code == 503 and "failed to start" in r.text
    serve.delete("never")
