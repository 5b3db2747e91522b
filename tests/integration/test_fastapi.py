"""FastAPI ingress as on Ray Serve (issue 12): lifespan, the features of a real FastAPI
app (path parameters, dependencies, response models, include_router, middleware), and
one app object shared by two ingress deployments."""

from __future__ import annotations

import os
import uuid
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis

from actors import serve
from tests.cluster import poll

fastapi = pytest.importorskip("fastapi")
pydantic = pytest.importorskip("pydantic")

from fastapi import APIRouter, Depends, FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from pydantic import BaseModel  # noqa: E402


@pytest.fixture(scope="module")
def base_url(serve_instance) -> str:
    return f"http://127.0.0.1:{os.environ['MQSERVE_HTTP_PORT']}"


# Lifespan ---------------------------------------------------------------------------------

def test_a_lifespan_startup_that_fails_fails_the_deploy(serve_instance) -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        raise ValueError("no model weights")
        yield

    app = FastAPI(lifespan=lifespan)

    @serve.deployment
    @serve.ingress(app)
    class Crashes:
        @app.get("/")
        def root(self) -> str:
            return "unreachable"

    # As Ray Serve: a RuntimeError, here carrying the app's own error
    with pytest.raises(RuntimeError, match="ASGI lifespan startup failed: ValueError: no model weights"):
        serve.run(Crashes.bind(), name="crashes", route_prefix="/crashes")
    assert serve.status().applications["crashes"].status == "DEPLOY_FAILED"
    serve.delete("crashes")


def test_the_lifespan_runs_after_the_constructor_and_shuts_down_with_the_replica(serve_instance, base_url,
                                                                                redis_url) -> None:
    key = f"{serve_instance.keys.ns}:test:lifespan:{uuid.uuid4().hex}"

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        db = redis.Redis.from_url(redis_url)
        db.rpush(key, "startup")
        yield {"seen_at_startup": [x.decode() for x in db.lrange(key, 0, -1)]}
        db.rpush(key, "shutdown")

    app = FastAPI(lifespan=lifespan)

    @serve.deployment
    @serve.ingress(app)
    class Lived:
        def __init__(self) -> None:
            redis.Redis.from_url(redis_url).rpush(key, "constructor")

        @app.get("/")
        def root(self, request: Request) -> list:
            return request.state.seen_at_startup

    serve.run(Lived.bind(), name="lived", route_prefix="/lived")
    # The startup ran after the constructor, and the state it yielded reaches every request
    assert httpx.get(f"{base_url}/lived/").json() == ["constructor", "startup"]
    # And the shutdown runs when the replica stops
    serve.delete("lived")
    db = redis.Redis.from_url(redis_url)
    poll(lambda: db.llen(key) == 3, what="the lifespan shutdown")
    assert db.lrange(key, 0, -1) == [b"constructor", b"startup", b"shutdown"]
    db.delete(key)


# A FastAPI app's features -------------------------------------------------------------------

class Item(BaseModel):
    name: str
    price: float


class ItemOut(BaseModel):
    name: str


def test_fastapi_features_work_as_on_ray(serve_instance, base_url) -> None:
    app = FastAPI()

    @app.middleware("http")
    async def stamp(request: Request, call_next):
        response = await call_next(request)
        response.headers["x-stamped"] = "yes"
        return response

    def pagination(limit: int = 10) -> dict:
        return {"limit": limit}

    async def session():
        yield "session"

    @app.exception_handler(KeyError)
    async def missing(request: Request, exc: KeyError) -> JSONResponse:
        return JSONResponse({"missing": str(exc)}, status_code=404)

    router = APIRouter(prefix="/router")

    @router.get("/ping")
    def ping() -> str:
        return "pong"

    nested = APIRouter()

    @nested.get("/deep/{n}")
    def deep(n: int) -> int:
        return n * 2

    router.include_router(nested, prefix="/nested")
    app.include_router(router)
    app.include_router(APIRouter(), prefix="/empty")

    @app.get("/function/{a}")
    def function_route(a: int) -> dict:
        return {"a": a}

    mounted = FastAPI()

    @mounted.get("/hi")
    def hi() -> str:
        return "from a mounted app"

    app.mount("/mounted", mounted)

    @serve.deployment
    @serve.ingress(app)
    class Shop:
        def __init__(self) -> None:
            self.items = {"apple": 1.5}

        @app.get("/items/{name}", response_model=ItemOut)
        def get_item(self, name: str, page: dict = Depends(pagination),  # noqa: B008 - FastAPI's idiom
                     db: str = Depends(session)) -> Any:  # noqa: B008
            return {"name": name, "price": self.items[name], "page": page, "db": db}

        @app.post("/items", status_code=201)
        def add(self, item: Item) -> dict:
            self.items[item.name] = item.price
            return {"count": len(self.items)}

        @app.get("/calc/{i}")
        def calc(self, i: int) -> int:
            return i + 1

        @app.post("/calc/{i}")  # noqa: F811 - the same name for another HTTP method, as Ray's tests do
        def calc(self, i: int) -> int:  # noqa: F811
            return i - 1

        def plain_method(self, x: int) -> int:
            return x * 10

    handle = serve.run(Shop.bind(), name="shop", route_prefix="/shop")
    get = lambda path: httpx.get(f"{base_url}/shop{path}")  # noqa: E731
    # Path parameters, dependencies (a yield one too) and a response model filtering fields
    r = get("/items/apple?limit=3")
    assert (r.status_code, r.json(), r.headers["x-stamped"]) == (200, {"name": "apple"}, "yes")
    # Validation and exception handlers
    assert get("/calc/not-a-number").status_code == 422
    assert get("/items/pear").json() == {"missing": "'pear'"}
    # A body model, a status code, and state kept on the instance
    r = httpx.post(f"{base_url}/shop/items", json={"name": "pear", "price": 2})
    assert (r.status_code, r.json()) == (201, {"count": 2})
    assert get("/items/pear").json() == {"name": "pear"}
    # Methods redefined for another HTTP method are both routes
    assert (get("/calc/41").json(), httpx.post(f"{base_url}/shop/calc/41").json()) == (42, 40)
    # Routers included (nested, with prefixes) and plain function routes
    assert get("/router/ping").json() == "pong"
    assert get("/router/nested/deep/21").json() == 42
    assert get("/function/7").json() == {"a": 7}
    assert get("/mounted/hi").json() == "from a mounted app"
    # OpenAPI docs know the routes, under the app's route prefix
    assert "/items/{name}" in get("/openapi.json").json()["paths"]
    # And the handle calls the methods as methods
    assert handle.calc.remote(1).result(timeout_s=10) == 0
    assert handle.plain_method.remote(2).result(timeout_s=10) == 20
    serve.delete("shop")


def test_method_routes_can_live_in_an_included_router(serve_instance, base_url) -> None:
    app = FastAPI()
    router = APIRouter()

    class Counter:
        def __init__(self) -> None:
            self.count = 0

        @router.post("/incr")
        def incr(self) -> int:
            self.count += 1
            return self.count

    # Given method routes on a router included (with a prefix) before the class is decorated
    app.include_router(router, prefix="/counter")
    counter = serve.deployment(serve.ingress(app)(Counter))
    serve.run(counter.bind(), name="counter", route_prefix="/c")
    assert [httpx.post(f"{base_url}/c/counter/incr").json() for _ in range(2)] == [1, 2]
    serve.delete("counter")


# One app shared by two deployments ----------------------------------------------------------

def test_one_fastapi_app_shared_by_two_ingress_deployments(serve_instance, base_url) -> None:
    app = FastAPI()

    @app.get("/shared")
    def shared() -> str:
        return "shared"

    @serve.deployment
    @serve.ingress(app)
    class First:
        @app.get("/")
        def root(self) -> str:
            return "first"

        @app.get("/only-first")
        def only(self) -> str:
            return "first only"

    @serve.deployment
    @serve.ingress(app)
    class Second:
        @app.get("/")
        def root(self) -> str:
            return "second"

        @app.get("/only-second")
        def only(self) -> str:
            return "second only"

    @app.get("/late")
    def late() -> str:
        return "added after both were decorated"

    serve.run(First.bind(), name="first", route_prefix="/v1")
    serve.run(Second.bind(), name="second", route_prefix="/v2")
    got = {path: (r.status_code, r.json() if r.status_code == 200 else None)
           for path in ("/v1/", "/v2/", "/v1/only-first", "/v2/only-second", "/v1/only-second",
                        "/v2/only-first", "/v1/shared", "/v2/shared", "/v1/late", "/v2/late")
           for r in [httpx.get(f"{base_url}{path}")]}
    # Each serves its own method routes, and the function routes the app had when decorated
    assert got == {
        "/v1/": (200, "first"), "/v2/": (200, "second"),
        "/v1/only-first": (200, "first only"), "/v2/only-second": (200, "second only"),
        "/v1/only-second": (404, None), "/v2/only-first": (404, None),
        "/v1/shared": (200, "shared"), "/v2/shared": (200, "shared"),
        "/v1/late": (404, None), "/v2/late": (404, None),
    }
    serve.delete("first")
    serve.delete("second")


def test_an_ingress_app_that_cannot_be_copied_is_refused_at_decoration() -> None:
    import threading

    app = FastAPI()
    app.state.lock = threading.Lock()  # what cloudpickle cannot copy

    class Holder:
        pass

    with pytest.raises(TypeError, match="could not copy the ASGI app of Holder"):
        serve.ingress(app)(Holder)
