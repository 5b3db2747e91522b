"""Ray Serve's handle semantics that ported apps and their tests notice (issue 12): async
constructors, bound deployments nested in any object, the positional name, unknown
methods, and blocking calls made inside an event loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from actors import serve
from actors.exceptions import RayServeException, RequestCancelledError
from actors.handle import DeploymentHandle


@serve.deployment
class AsyncInit:
    async def __init__(self, greeting: str) -> None:
        await asyncio.sleep(0)
        self.greeting = greeting
        self.loop = asyncio.get_running_loop()

    async def __call__(self, name: str) -> str:
        # The constructor ran on the loop that serves the async methods.
        assert asyncio.get_running_loop() is self.loop
        return f"{self.greeting}, {name}"


def test_an_async_constructor_is_awaited(serve_instance) -> None:
    handle = serve.run(AsyncInit.bind("Hello"), name="async-init", route_prefix=None)
    assert handle.remote("Ray").result(timeout_s=30) == "Hello, Ray"


@serve.deployment
class Leaf:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __call__(self) -> str:
        return self.tag


@dataclass
class Clients:
    first: object
    settings: dict


class Registry:
    """A custom class holding bound deployments deep inside."""

    def __init__(self, leaf: object) -> None:
        self.by_name = {"leaf": [leaf]}


@serve.deployment
class Uses:
    def __init__(self, clients: Clients, registry: Registry) -> None:
        self.clients, self.registry = clients, registry

    async def __call__(self) -> list:
        first = self.clients.first
        second = self.registry.by_name["leaf"][0]
        assert isinstance(first, DeploymentHandle) and isinstance(second, DeploymentHandle)
        return [await first.remote(), await second.remote(), self.clients.settings]


def test_bound_deployments_inside_any_picklable_object_become_handles(serve_instance) -> None:
    app = Uses.bind(Clients(Leaf.bind("a"), {"k": 1}), Registry(Leaf.bind("b")))
    handle = serve.run(app, name="nested-objects", route_prefix=None)
    assert handle.remote().result(timeout_s=30) == ["a", "b", {"k": 1}]


@serve.deployment("Named", num_replicas=1)
class PositionallyNamed:
    def __call__(self) -> str:
        return "named"

    def exists(self) -> str:
        return "yes"


def test_the_name_may_be_given_positionally(serve_instance) -> None:
    assert PositionallyNamed.name == "Named"
    serve.run(PositionallyNamed.bind(), name="positional", route_prefix=None)
    assert serve.status().applications["positional"].deployments["Named"].status == "HEALTHY"
    handle = serve.get_deployment_handle("Named", app_name="positional")
    assert handle.remote().result(timeout_s=30) == "named"
    with pytest.raises(ValueError, match="two names"):
        serve.deployment("A", name="B")


def test_an_unknown_method_names_the_available_ones(serve_instance) -> None:
    handle = serve.run(PositionallyNamed.bind(), name="methods", route_prefix=None)
    with pytest.raises(RayServeException) as info:
        handle.does_not_exist.remote().result(timeout_s=30)
    message = str(info.value)
    assert "'does_not_exist'" in message and "Available methods: ['exists']" in message


@serve.deployment
class Counter:
    def __call__(self) -> int:
        return 1

    def count(self, n: int):
        yield from range(n)


def test_blocking_calls_inside_an_event_loop_raise(serve_instance) -> None:
    handle = serve.run(Counter.bind(), name="blocking", route_prefix=None)

    async def misuse() -> list[str]:
        errors = []
        response = handle.remote()
        try:
            response.result()
        except RuntimeError as e:
            errors.append(str(e))
        assert await response == 1
        gen = handle.options(stream=True).count.remote(2)
        try:
            next(gen)
        except RuntimeError as e:
            errors.append(str(e))
        assert [i async for i in gen] == [0, 1]
        return errors

    errors = asyncio.run(misuse())
    assert len(errors) == 2
    for error in errors:
        assert "should not be called from within an `asyncio` event loop" in error


@serve.deployment
class Endless:
    def forever(self):
        i = 0
        while True:
            yield i
            i += 1


def test_a_cancelled_response_generator_raises_on_the_next_item(serve_instance) -> None:
    handle = serve.run(Endless.bind(), name="endless", route_prefix=None).options(stream=True)
    gen = handle.forever.remote()
    assert next(gen) == 0
    gen.cancel()
    with pytest.raises(RequestCancelledError):
        next(gen)

    async def in_a_loop() -> None:
        agen = handle.forever.remote()
        assert await agen.__anext__() == 0
        agen.cancel()
        with pytest.raises(RequestCancelledError):
            await agen.__anext__()

    asyncio.run(in_a_loop())
    # Cancelled before the first item, too
    early = handle.forever.remote()
    early.cancel()
    with pytest.raises(RequestCancelledError):
        next(early)


@serve.deployment
class Streams:
    def numbers(self, n: int):
        yield from range(n)

    async def returns_a_generator(self, n: int):
        await asyncio.sleep(0)
        return (i * 10 for i in range(n))

    async def returns_an_async_generator(self, n: int):
        async def items():
            for i in range(n):
                yield i * 100

        await asyncio.sleep(0)
        return items()

    def unary(self, n: int) -> int:
        return n

    async def async_unary(self, n: int) -> int:
        return n


def test_an_async_method_that_returns_a_generator_streams(serve_instance) -> None:
    handle = serve.run(Streams.bind(), name="async-returns-gen", route_prefix=None).options(stream=True)
    assert list(handle.returns_a_generator.remote(3)) == [0, 10, 20]
    assert list(handle.returns_an_async_generator.remote(3)) == [0, 100, 200]


@serve.deployment
class Relay:
    """Calls Streams from inside a deployment: the same rules hold there."""

    def __init__(self, streams: DeploymentHandle) -> None:
        self.streams = streams

    async def unary_on_generator(self) -> str:
        try:
            await self.streams.numbers.remote(2)
        except TypeError as e:
            return str(e)
        return "no error"

    async def stream_on_unary(self, method: str) -> str:
        try:
            async for _ in self.streams.options(stream=True, method_name=method).remote(1):
                pass
        except TypeError as e:
            return str(e)
        return "no error"


def test_generator_and_non_generator_mismatches_are_type_errors(serve_instance) -> None:
    streams = serve.run(Streams.bind(), name="mismatch", route_prefix=None)
    # From the driver
    with pytest.raises(TypeError, match=r"Method 'numbers' returned a generator. You must use "
                                        r"`handle.options\(stream=True\)` to call generators on a deployment."):
        streams.numbers.remote(2).result(timeout_s=30)
    for method in ("unary", "async_unary"):
        gen = streams.options(stream=True, method_name=method).remote(1)
        with pytest.raises(TypeError, match=f"'{method}' .* but it did not return a generator"):
            next(gen)
    # And from inside another deployment
    relay = serve.run(Relay.bind(Streams.bind()), name="relay", route_prefix=None)
    assert "Method 'numbers' returned a generator" in relay.unary_on_generator.remote().result(timeout_s=30)
    for method in ("unary", "async_unary"):
        said = relay.stream_on_unary.remote(method).result(timeout_s=30)
        assert f"Called method '{method}' with `handle.options(stream=True)` but it did not return a generator" in said
