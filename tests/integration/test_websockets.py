"""WebSockets through the gateway (issue 13, part 3), as on Ray Serve: a FastAPI
``@app.websocket`` route or a Starlette ``WebSocketRoute`` of an ingress, reached with a
real client (the ``websockets`` package) through the real gateway. Cluster mode (a
separate worker and gateway on TCP Redis); local mode in ``test_websockets_local``."""

from __future__ import annotations

import asyncio
import os
import uuid

import httpx
import pytest
import redis

from actors import serve
from tests.cluster import poll, settle_keys

websockets = pytest.importorskip("websockets")
fastapi = pytest.importorskip("fastapi")

from fastapi import FastAPI, WebSocket, WebSocketDisconnect  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.routing import WebSocketRoute  # noqa: E402
from websockets.asyncio.client import connect as aconnect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402


@pytest.fixture(scope="module")
def ws_url(serve_instance) -> str:
    return f"ws://127.0.0.1:{os.environ['MQSERVE_HTTP_PORT']}"


def deploy_echo(route_prefix: str = "/", name: str = "echo", **options):
    app = FastAPI()

    @serve.deployment(**options)
    @serve.ingress(app)
    class Echo:
        @app.get("/")
        def hello(self) -> str:
            return "hi"

        @app.websocket("/ws")
        async def echo(self, ws: WebSocket) -> None:
            await ws.accept()
            try:
                while True:
                    message = await ws.receive()
                    if message["type"] == "websocket.disconnect":
                        return
                    if message.get("text") is not None:
                        await ws.send_text(message["text"])
                    else:
                        await ws.send_bytes(message["bytes"])
            except WebSocketDisconnect:
                return

    serve.run(Echo.bind(), name=name, route_prefix=route_prefix)


@pytest.mark.parametrize("route_prefix", ["/", "/prefix"])
def test_text_and_bytes_go_both_ways(serve_instance, ws_url, route_prefix) -> None:
    deploy_echo(route_prefix, name=f"echo{route_prefix.strip('/')}")
    base = "" if route_prefix == "/" else route_prefix
    with connect(f"{ws_url}{base}/ws") as ws:
        ws.send("Hello world!")
        assert ws.recv(timeout=10) == "Hello world!"
        ws.send(b"\x00\xffbytes")
        assert ws.recv(timeout=10) == b"\x00\xffbytes"
        ws.send("é" * 100_000)  # large, and not ASCII
        assert ws.recv(timeout=10) == "é" * 100_000
    # The same app still answers HTTP
    assert httpx.get(f"http://{ws_url[5:]}{base}/").json() == "hi"
    serve.delete(f"echo{route_prefix.strip('/')}")


def test_many_messages_arrive_in_order_and_nothing_is_left_in_redis(serve_instance, cluster, ws_url) -> None:
    deploy_echo()
    with connect(f"{ws_url}/ws") as ws:  # the gateway's reply listener now keeps its key
        ws.send("warm")
        ws.recv(timeout=10)
    idle = cluster.namespace_keys()
    with connect(f"{ws_url}/ws") as ws:
        for i in range(300):  # sent all at once, read after
            ws.send(f"m{i}")
        assert [ws.recv(timeout=10) for _ in range(300)] == [f"m{i}" for i in range(300)]
        for i in range(100):  # one at a time
            ws.send(f"n{i}".encode())
            assert ws.recv(timeout=10) == f"n{i}".encode()
    settle_keys(cluster, idle, timeout_s=10)
    assert not [k for k in cluster.namespace_keys() if b":ws:" in k]
    serve.delete("echo")


def test_the_app_closes_with_its_code_and_reason(serve_instance, ws_url) -> None:
    app = FastAPI()

    @serve.deployment
    @serve.ingress(app)
    class Closer:
        @app.websocket("/")
        async def close(self, ws: WebSocket) -> None:
            await ws.accept()
            code = int(await ws.receive_text())
            await ws.close(code=code, reason=f"closing with {code}")

        @app.websocket("/returns")
        async def returns(self, ws: WebSocket) -> None:
            await ws.accept()
            await ws.send_text("bye")

        @app.websocket("/raises")
        async def raises(self, ws: WebSocket) -> None:
            await ws.accept()
            await ws.receive_text()
            raise ValueError("handler failed")

    serve.run(Closer.bind(), name="closer", route_prefix="/closer")
    for code in (1000, 1011, 4001):
        with connect(f"{ws_url}/closer/") as ws:
            ws.send(str(code))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (code, f"closing with {code}")
    with connect(f"{ws_url}/closer/returns") as ws:  # a handler that returns closes with 1000
        assert ws.recv(timeout=10) == "bye"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1000
    with connect(f"{ws_url}/closer/raises") as ws:  # one that raises, with 1011
        ws.send("boom")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1011
    serve.delete("closer")


def test_quick_connections_lose_nothing_twenty_times(serve_instance, cluster, ws_url) -> None:
    """The races of a connection's end: an app that sends and returns at once (its request
    ends while the gateway still reads what it sent), and a client that leaves at once
    (before or while the app accepts). Nothing lost, nothing left in Redis."""
    app = FastAPI()

    @serve.deployment
    @serve.ingress(app)
    class Brief:
        @app.websocket("/")
        async def brief(self, ws: WebSocket) -> None:
            await ws.accept()
            for i in range(3):
                await ws.send_text(str(i))

    serve.run(Brief.bind(), name="brief", route_prefix="/brief")
    with connect(f"{ws_url}/brief/") as ws:  # the gateway's reply listener now keeps its key
        ws.recv(timeout=10)
    idle = cluster.namespace_keys()
    for _ in range(20):
        with connect(f"{ws_url}/brief/") as ws:
            assert [ws.recv(timeout=10) for _ in range(3)] == ["0", "1", "2"]
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == 1000
        connect(f"{ws_url}/brief/").close()  # leaves at once
    settle_keys(cluster, idle, timeout_s=15)
    serve.delete("brief")


def test_the_client_closing_reaches_the_handler_with_its_code(serve_instance, ws_url) -> None:
    app = FastAPI()

    @serve.deployment
    @serve.ingress(app)
    class Listener:
        def __init__(self) -> None:
            self.codes: list[int] = []

        def seen(self) -> list[int]:
            return self.codes

        @app.websocket("/")
        async def listen(self, ws: WebSocket) -> None:
            await ws.accept()
            try:
                while True:
                    await ws.receive_text()
            except WebSocketDisconnect as e:  # as Ray's test: the handler sees the disconnect
                self.codes.append(e.code)

    handle = serve.run(Listener.bind(), name="listener", route_prefix="/listener")
    with connect(f"{ws_url}/listener/") as ws:
        ws.send("x")
        ws.close(code=4002, reason="client done")
    with connect(f"{ws_url}/listener/") as ws:
        ws.send("y")  # a normal close
    assert poll(lambda: handle.seen.remote().result() == [4002, 1000], timeout_s=10, what="both disconnects")
    serve.delete("listener")


def test_a_client_that_leaves_cancels_a_handler_that_reads_nothing(serve_instance, ws_url, redis_url) -> None:
    key = f"test:ws:cancelled:{uuid.uuid4().hex}"
    app = FastAPI()

    @serve.deployment(max_ongoing_requests=1)
    @serve.ingress(app)
    class Ticker:
        @app.websocket("/")
        async def tick(self, ws: WebSocket) -> None:
            await ws.accept()
            await ws.send_text("started")
            try:
                await asyncio.sleep(3600)  # never reads: only a cancellation ends it
            except asyncio.CancelledError:
                redis.Redis.from_url(redis_url).rpush(key, "cancelled")
                raise

        @app.websocket("/echo")
        async def echo(self, ws: WebSocket) -> None:
            await ws.accept()
            await ws.send_text(await ws.receive_text())

    serve.run(Ticker.bind(), name="ticker", route_prefix="/ticker")
    db = redis.Redis.from_url(redis_url)
    try:
        with connect(f"{ws_url}/ticker/") as ws:
            assert ws.recv(timeout=10) == "started"
        poll(lambda: db.lrange(key, 0, -1) == [b"cancelled"], timeout_s=10, what="the handler to be cancelled")
        # Its one slot is free again
        with connect(f"{ws_url}/ticker/echo") as ws:
            ws.send("again")
            assert ws.recv(timeout=10) == "again"
    finally:
        db.delete(key)
        serve.delete("ticker")


def test_a_connection_is_refused_before_its_handshake(serve_instance, ws_url) -> None:
    app = FastAPI()

    @serve.deployment
    @serve.ingress(app)
    class Picky:
        @app.websocket("/")
        async def picky(self, ws: WebSocket) -> None:
            if ws.headers.get("x-token") != "secret":
                await ws.close()  # refused: 403
                return
            await ws.accept(subprotocol="v2" if "v2" in ws.scope["subprotocols"] else None)
            await ws.send_text(ws.query_params["name"])

        @app.websocket("/broken")
        async def broken(self, ws: WebSocket) -> None:
            raise RuntimeError("before the handshake")

        @app.websocket("/silent")
        async def silent(self, ws: WebSocket) -> None:
            return  # neither accepts nor closes

    serve.run(Picky.bind(), name="picky", route_prefix="/picky")
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{ws_url}/picky/?name=x")
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as failed:
        connect(f"{ws_url}/picky/broken")
    assert failed.value.response.status_code == 500
    with pytest.raises(InvalidStatus) as silent:  # as uvicorn answers such an app
        connect(f"{ws_url}/picky/silent")
    assert silent.value.response.status_code == 500
    with pytest.raises(InvalidStatus) as missing:
        connect(f"{ws_url}/nowhere/at/all")
    assert missing.value.response.status_code == 404
    with connect(f"{ws_url}/picky/?name=ada", additional_headers={"X-Token": "secret"},
                 subprotocols=["v1", "v2"]) as ws:
        assert ws.subprotocol == "v2"
        assert ws.recv(timeout=10) == "ada"
    serve.delete("picky")


def test_a_starlette_websocket_route_works_too(serve_instance, ws_url) -> None:
    async def shout(ws) -> None:
        await ws.accept()
        async for text in ws.iter_text():
            await ws.send_text(text.upper())

    @serve.deployment
    @serve.ingress(Starlette(routes=[WebSocketRoute("/shout", shout)]))
    class Shouter:
        pass

    serve.run(Shouter.bind(), name="shouter", route_prefix="/shouter")
    with connect(f"{ws_url}/shouter/shout") as ws:
        for word in ("a", "bc", "déf"):
            ws.send(word)
            assert ws.recv(timeout=10) == word.upper()
    serve.delete("shouter")


def test_fifty_sockets_echo_a_hundred_messages_each(serve_instance, cluster, ws_url) -> None:
    deploy_echo(name="echo50", route_prefix="/echo50", max_ongoing_requests=64)
    with connect(f"{ws_url}/echo50/ws") as ws:  # the gateway's reply listener now keeps its key
        ws.send("warm")
        ws.recv(timeout=10)
    idle = cluster.namespace_keys()

    async def one(n: int) -> list[str]:
        async with aconnect(f"{ws_url}/echo50/ws") as ws:
            got = []
            for i in range(100):
                await ws.send(f"{n}:{i}")
                if i % 10 == 9:  # ten in flight at a time
                    got += [await asyncio.wait_for(ws.recv(), 30) for _ in range(10)]
            return got

    async def all_of_them() -> list[list[str]]:
        return await asyncio.gather(*(one(n) for n in range(50)))

    results = asyncio.run(all_of_them())
    for n, got in enumerate(results):
        assert got == [f"{n}:{i}" for i in range(100)], f"socket {n} lost or reordered messages"
    settle_keys(cluster, idle, timeout_s=15)
    serve.delete("echo50")


def test_a_replica_that_dies_closes_its_sockets_with_1011(serve_instance, ws_url) -> None:
    app = FastAPI()

    @serve.deployment
    @serve.ingress(app)
    class Fragile:
        @app.websocket("/")
        async def fragile(self, ws: WebSocket) -> None:
            await ws.accept()
            while True:
                text = await ws.receive_text()
                if text == "die":
                    os._exit(1)
                await ws.send_text(text)

    serve.run(Fragile.bind(), name="fragile", route_prefix="/fragile")
    with connect(f"{ws_url}/fragile/") as bystander, connect(f"{ws_url}/fragile/") as ws:
        ws.send("alive?")
        assert ws.recv(timeout=10) == "alive?"
        ws.send("die")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=20)
        assert closed.value.rcvd.code == 1011
        with pytest.raises(ConnectionClosed) as closed:  # the other socket on that replica too
            bystander.recv(timeout=20)
        assert closed.value.rcvd.code == 1011
    serve.delete("fragile")
