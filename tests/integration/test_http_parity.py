"""HTTP behaviour a ported Ray Serve app or its tests notice (issue 12): cancellation on
disconnect and timeout, health and routes endpoints, route prefixes, returned Starlette
responses, backpressure statuses, errors midway through a stream."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from actors import serve
from actors.handle import DeploymentHandle
from tests.cluster import poll
from tests.conftest import free_port


@pytest.fixture(scope="module")
def port(serve_instance) -> int:
    return int(os.environ["MQSERVE_HTTP_PORT"])


@pytest.fixture(scope="module")
def base_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


@serve.deployment(max_ongoing_requests=100)
class Gate:
    """Holds its callers until opened, and records what happened to each of them."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.opened = asyncio.Event()

    async def enter(self, tag: str) -> str:
        self.events.append(f"{tag} started")
        try:
            await self.opened.wait()
        except asyncio.CancelledError:
            self.events.append(f"{tag} cancelled")
            raise
        return tag

    async def note(self, event: str) -> None:
        self.events.append(event)

    async def open(self) -> None:
        self.opened.set()

    def seen(self) -> list[str]:
        return list(self.events)


@serve.deployment(max_ongoing_requests=1)
class Door:
    """One request at a time, each waiting at the gate (a downstream call) it awaits."""

    def __init__(self, gate: DeploymentHandle) -> None:
        self.gate = gate

    async def __call__(self, request: Request) -> str:
        tag = request.query_params["tag"]
        try:
            return await self.gate.enter.remote(tag)
        except asyncio.CancelledError:
            self.gate.note.remote(f"door {tag} cancelled")
            raise


@serve.deployment
class StreamingDoor:
    """Streams a first chunk, then waits at the gate before the rest."""

    def __init__(self, gate: DeploymentHandle) -> None:
        self.gate = gate

    def __call__(self, request: Request) -> StreamingResponse:
        tag = request.query_params["tag"]

        async def body():
            yield "first;"
            try:
                yield await self.gate.enter.remote(tag)
            except asyncio.CancelledError:
                self.gate.note.remote(f"stream {tag} cancelled")
                raise

        return StreamingResponse(body(), media_type="text/plain")


def open_request(port: int, path: str) -> socket.socket:
    """A client that sent a request and reads nothing: closing it is a disconnect."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return sock


def events(gate: DeploymentHandle) -> Callable[[], list[str]]:
    return lambda: gate.seen.remote().result(timeout_s=10)


@pytest.fixture
def door(serve_instance) -> Iterator[tuple[DeploymentHandle, str]]:
    """The Door app (on /door) and its gate; deleted after the test."""
    serve.run(Door.bind(Gate.bind()), name="door", route_prefix="/door")
    yield serve.get_deployment_handle("Gate", "door"), "door"
    serve.delete("door")


# Disconnects and timeouts ----------------------------------------------------------------

def test_a_client_that_leaves_withdraws_its_queued_request(serve_instance, port, base_url, door) -> None:
    gate, app = door
    queue = serve_instance.keys.queue(app, "Door")
    # Given a request running at the Door (one at a time), and a second one queued behind it
    first = open_request(port, "/door?tag=first")
    poll(lambda: "first started" in events(gate)(), what="the first request to start")
    second = open_request(port, "/door?tag=second")
    poll(lambda: serve_instance.redis.llen(queue) == 1, what="the second request to queue")
    # When the second client leaves
    second.close()
    # Then its request is withdrawn from the queue, and never runs once the Door is free
    poll(lambda: serve_instance.redis.llen(queue) == 0, what="the queued request to be withdrawn")
    gate.open.remote().result(timeout_s=10)
    assert httpx.get(f"{base_url}/door?tag=third", timeout=30).text == "third"
    first.close()
    assert events(gate)() == ["first started", "third started"]


def test_a_client_that_leaves_cancels_its_running_request_and_what_it_awaits(port, base_url, door) -> None:
    gate, _ = door
    # Given a request running at the Door, awaiting a downstream call
    client = open_request(port, "/door?tag=a")
    poll(lambda: "a started" in events(gate)(), what="the request to start")
    # When its client leaves
    client.close()
    # Then the ingress gets CancelledError, and so does the downstream call it awaited
    poll(lambda: {"a cancelled", "door a cancelled"} <= set(events(gate)()), what="both to be cancelled")
    # And the Door's only slot is free again
    again = open_request(port, "/door?tag=b")
    poll(lambda: "b started" in events(gate)(), what="the next request to start")
    again.close()
    # (and leaves the slot free for the next test)
    poll(lambda: "door b cancelled" in events(gate)(), what="the next request to be cancelled")


@pytest.fixture(scope="module")
def timeout_gateway(cluster, serve_instance) -> Iterator[str]:
    """A second gateway with a 1 s request timeout (MQSERVE_HTTP_TIMEOUT_S)."""
    port = free_port()
    cluster.add_gateway(port, env={"MQSERVE_HTTP_TIMEOUT_S": "1"})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        cluster.stop_gateway(port)


def test_a_timeout_is_408_and_cancels_the_request(timeout_gateway: str, door) -> None:
    gate, _ = door
    # Given a request that waits at the gate longer than the gateway's timeout
    r = httpx.get(f"{timeout_gateway}/door?tag=slow", headers={"X-Request-Id": "slow-1"}, timeout=30)
    # Then the client gets Ray's 408, naming the request by its id, and the request is
    # cancelled downstream too
    assert r.status_code == 408 and r.text == "Request slow-1 timed out after 1.0s.", r.text
    assert r.headers["x-request-id"] == "slow-1"
    poll(lambda: {"slow cancelled", "door slow cancelled"} <= set(events(gate)()), what="the cancellation")


def test_a_timeout_cancels_a_streamed_response(timeout_gateway: str, serve_instance) -> None:
    serve.run(StreamingDoor.bind(Gate.bind()), name="sdoor", route_prefix="/sdoor")
    gate = serve.get_deployment_handle("Gate", "sdoor")
    # Given a streamed response whose second chunk waits past the timeout
    with httpx.stream("GET", f"{timeout_gateway}/sdoor?tag=s", timeout=30) as r:
        assert r.status_code == 200
        chunks = r.iter_text()
        assert next(chunks) == "first;"
        # Then the response is cut (not ended as if complete, and long before the client's timeout)
        with pytest.raises(httpx.RemoteProtocolError):
            list(chunks)
    # And the generator is cancelled, and so is the call it awaited
    poll(lambda: {"s cancelled", "stream s cancelled"} <= set(events(gate)()), what="the cancellation")
    serve.delete("sdoor")


# Route prefixes ---------------------------------------------------------------------------

@serve.deployment
class Hello:
    def __call__(self) -> str:
        return "hello"


@pytest.mark.parametrize("prefix, message", [
    ("hello", "must start with a forward slash ('/')"),
    ("/hello/", "may not end with a trailing '/'"),
    ("/{name}", "may not contain wildcards"),
    ("/a}", "may not contain wildcards"),
])
def test_route_prefix_is_validated_at_run(serve_instance, prefix: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        serve.run(Hello.bind(), name="badprefix", route_prefix=prefix)
    assert serve_instance.app("badprefix") is None


def test_slash_and_none_are_valid_route_prefixes(serve_instance, base_url) -> None:
    serve.run(Hello.bind(), name="noroute", route_prefix=None)
    serve.run(Hello.bind(), name="nested", route_prefix="/a/b")
    assert httpx.get(f"{base_url}/a/b").text == "hello"
    serve.delete("noroute")
    serve.delete("nested")


# Returned Starlette responses ---------------------------------------------------------------

def _numbers() -> Any:
    for i in range(3):
        yield f"{i};"


@serve.deployment
def plain_function(request: Request) -> Response:
    return Response("plain", status_code=202, headers={"x-kind": "plain"})


@serve.deployment
def redirect_function(request: Request) -> RedirectResponse:
    return RedirectResponse("/elsewhere")


@serve.deployment
def streaming_function(request: Request) -> StreamingResponse:
    return StreamingResponse(_numbers(), media_type="text/plain")


@serve.deployment
class Responses:
    def __call__(self, request: Request) -> Response:
        kind = request.query_params["kind"]
        if kind == "redirect":
            return RedirectResponse("/elsewhere", status_code=302)
        if kind == "stream":
            return StreamingResponse(_numbers(), media_type="text/plain")
        return Response("plain", status_code=202, headers={"x-kind": "plain"})


@serve.deployment
class StarArgs:
    async def __call__(self, *args: Any) -> str:
        request = args[0]
        return f"{type(request).__name__} {request.url.path}"


def test_returned_starlette_responses_from_functions_and_classes(serve_instance, base_url) -> None:
    for app in (plain_function, redirect_function, streaming_function, Responses, StarArgs):
        serve.run(app.bind(), name=app.name, route_prefix=f"/{app.name}")
    r = httpx.get(f"{base_url}/plain_function")
    assert (r.status_code, r.text, r.headers["x-kind"]) == (202, "plain", "plain")
    r = httpx.get(f"{base_url}/redirect_function")
    assert (r.status_code, r.headers["location"]) == (307, "/elsewhere")
    assert httpx.get(f"{base_url}/streaming_function").text == "0;1;2;"
    r = httpx.get(f"{base_url}/Responses?kind=plain")
    assert (r.status_code, r.text, r.headers["x-kind"]) == (202, "plain", "plain")
    r = httpx.get(f"{base_url}/Responses?kind=redirect")
    assert (r.status_code, r.headers["location"]) == (302, "/elsewhere")
    assert httpx.get(f"{base_url}/Responses?kind=stream").text == "0;1;2;"
    assert httpx.get(f"{base_url}/StarArgs/x").text == "Request /StarArgs/x"
    for app in (plain_function, redirect_function, streaming_function, Responses, StarArgs):
        serve.delete(app.name)


# Errors midway through a stream ----------------------------------------------------------

@serve.deployment
class BreaksMidway:
    def __call__(self, request: Request) -> StreamingResponse:
        if request.query_params.get("async"):
            async def body():
                yield "first result"
                raise RuntimeError("raised in generator")
        else:
            def body():
                yield "first result"
                raise RuntimeError("raised in generator")
        return StreamingResponse(body(), media_type="text/plain")


@pytest.mark.parametrize("query", ["", "?async=1"])
def test_an_error_midway_through_a_stream_cuts_the_response(serve_instance, base_url, query: str) -> None:
    serve.run(BreaksMidway.bind(), name="midway", route_prefix="/midway")
    with httpx.stream("GET", f"{base_url}/midway{query}", timeout=30) as r:
        assert r.status_code == 200
        chunks = r.iter_text()
        assert next(chunks) == "first result"
        # The client cannot take the response for a complete one
        with pytest.raises(httpx.RemoteProtocolError):
            next(chunks)
    # And the gateway goes on serving
    assert httpx.get(f"{base_url}/-/healthz").text == "success"


# Backpressure ---------------------------------------------------------------------------------

@serve.deployment(max_ongoing_requests=1, max_queued_requests=1)
class Child:
    """One request at a time, one more waiting; each waits at the gate."""

    def __init__(self, gate: DeploymentHandle) -> None:
        self.gate = gate

    async def __call__(self, tag: str | Request) -> str:
        if isinstance(tag, Request):  # called over HTTP
            tag = tag.query_params["tag"]
        return await self.gate.enter.remote(tag)


@serve.deployment
class Parent:
    def __init__(self, child: DeploymentHandle) -> None:
        self.child = child

    async def __call__(self, request: Request) -> str:
        return await self.child.remote(request.query_params["tag"])


def _fastapi_parent() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @serve.ingress(app)
    class FastAPIParent:
        def __init__(self, child: DeploymentHandle) -> None:
            self.child = child

        @app.get("/async")
        async def async_route(self, tag: str) -> PlainTextResponse:
            return PlainTextResponse(await self.child.remote(tag))

        @app.get("/sync")
        def sync_route(self, tag: str) -> PlainTextResponse:
            return PlainTextResponse(self.child.remote(tag).result())

    return serve.deployment(FastAPIParent)


BACKPRESSURE_ANSWERS = [
    pytest.param({}, 503, None, id="default"),
    pytest.param({"backpressure_config": {"status_code": 429, "retry_after_s": 7}}, 429, "7", id="429"),
    pytest.param({"backpressure_config": {"status_code": 503, "retry_after_s": 2.5}}, 503, "3", id="503-rounded-up"),
]


def _fill_then_refuse(serve_instance, url: str, app: str, gate: DeploymentHandle) -> tuple[list, httpx.Response]:
    """One request running at the Child, one waiting; then the refused one."""
    from concurrent.futures import ThreadPoolExecutor

    queue = serve_instance.keys.queue(app, "Child")
    pool = ThreadPoolExecutor(2)
    first = pool.submit(httpx.get, f"{url}first", timeout=30)
    poll(lambda: "first started" in events(gate)(), what="the first request to run")
    second = pool.submit(httpx.get, f"{url}second", timeout=30)
    poll(lambda: serve_instance.redis.llen(queue) == 1, what="the second request to wait")
    refused = httpx.get(f"{url}third", timeout=30)
    gate.open.remote().result(timeout_s=10)
    answers = [first.result(), second.result()]
    pool.shutdown()
    return answers, refused


def _check_refused(r: httpx.Response, status: int, retry_after: str | None) -> None:
    assert r.status_code == status, r.text
    assert r.text.startswith("Request dropped due to backpressure"), r.text
    assert r.headers.get("retry-after") == retry_after


@pytest.mark.parametrize("options, status, retry_after", BACKPRESSURE_ANSWERS)
def test_backpressure_at_the_ingress(serve_instance, base_url, options, status, retry_after) -> None:
    # Given an ingress with max_queued_requests=1 (and a backpressure_config, or not)
    serve.run(Child.options(**options).bind(Gate.bind()), name="bp", route_prefix="/bp")
    # When a request arrives while one runs and one waits, it is refused with Ray's answer
    answers, refused = _fill_then_refuse(serve_instance, f"{base_url}/bp?tag=", "bp",
                                         serve.get_deployment_handle("Gate", "bp"))
    _check_refused(refused, status, retry_after)
    # And the others are served
    assert [(r.status_code, r.text) for r in answers] == [(200, "first"), (200, "second")]
    serve.delete("bp")


@pytest.mark.parametrize("options, status, retry_after", BACKPRESSURE_ANSWERS)
@pytest.mark.parametrize("front", ["plain", "fastapi-async", "fastapi-sync"])
def test_backpressure_downstream(serve_instance, base_url, front, options, status, retry_after) -> None:
    # Given an ingress (plain, or a FastAPI route) calling a Child that refuses past its queue
    child = Child.options(**options).bind(Gate.bind())
    ingress = Parent.bind(child) if front == "plain" else _fastapi_parent().bind(child)
    serve.run(ingress, name="bpdown", route_prefix="/bpdown")
    path = {"plain": "/bpdown?tag=", "fastapi-async": "/bpdown/async?tag=", "fastapi-sync": "/bpdown/sync?tag="}
    # When the Child refuses a request the ingress made, the client gets the same answer
    answers, refused = _fill_then_refuse(serve_instance, base_url + path[front], "bpdown",
                                         serve.get_deployment_handle("Gate", "bpdown"))
    _check_refused(refused, status, retry_after)
    assert [(r.status_code, r.text) for r in answers] == [(200, "first"), (200, "second")]
    serve.delete("bpdown")


def test_backpressure_config_is_checked() -> None:
    with pytest.raises(ValueError, match="503 or 429"):
        Child.options(backpressure_config={"status_code": 500})
    with pytest.raises(ValueError, match="retry_after_s"):
        Child.options(backpressure_config={"retry_after": 3})
