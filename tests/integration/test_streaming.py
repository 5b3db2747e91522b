"""Streamed handle calls: the seed's Streamer/Caller, errors midway, early stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Generator

import pytest

from actors import serve
from actors.handle import DeploymentHandle, DeploymentResponseGenerator


@serve.deployment
class Streamer:
    def __call__(self, limit: int) -> Generator[int, None, None]:
        for i in range(limit):
            yield i


@serve.deployment
class Caller:
    def __init__(self, streamer: DeploymentHandle):
        self._streamer = streamer.options(
            # Must set `stream=True` on the handle, then the output will be a
            # response generator.
            stream=True,
        )

    async def __call__(self, limit: int) -> AsyncGenerator[int, None]:
        # Response generator can be used in an `async for` block.
        r: DeploymentResponseGenerator = self._streamer.remote(limit)
        async for i in r:
            yield i


class Midway(Exception):
    pass


@serve.deployment
class Tricky:
    def __init__(self) -> None:
        self.stopped_early = False

    def fails(self, n: int):
        for i in range(n):
            yield i
        raise Midway("after the items")

    async def forever(self):
        try:
            i = 0
            while True:
                yield i
                i += 1
                await asyncio.sleep(0.01)
        finally:
            self.stopped_early = True

    def slow_first(self):
        yield "first"
        time.sleep(1.0)
        yield "second"

    def was_stopped(self) -> bool:
        return self.stopped_early

    def not_a_generator(self) -> int:
        return 1


def test_seed_streamer_and_caller(serve_instance) -> None:
    app = Caller.bind(Streamer.bind())
    handle: DeploymentHandle = serve.run(app, name="stream", route_prefix="/stream").options(stream=True)
    # Response generator can also be used as a regular generator in a sync context.
    r: DeploymentResponseGenerator = handle.remote(10)
    assert list(r) == list(range(10))

    async def consume() -> list[int]:
        return [i async for i in handle.remote(5)]

    assert asyncio.run(consume()) == [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def tricky(serve_instance) -> DeploymentHandle:
    return serve.run(Tricky.bind(), name="tricky", route_prefix="/tricky")


def test_error_midway_arrives_after_the_items(tricky: DeploymentHandle) -> None:
    got = []
    with pytest.raises(Midway, match="after the items"):
        for item in tricky.options(stream=True, method_name="fails").remote(3):
            got.append(item)
    assert got == [0, 1, 2]


def test_items_arrive_before_the_generator_ends(tricky: DeploymentHandle) -> None:
    start = time.monotonic()
    gen = tricky.options(stream=True, method_name="slow_first").remote()
    assert next(gen) == "first"
    assert time.monotonic() - start < 0.9
    assert next(gen) == "second"


def test_stopping_early_stops_the_generator_on_the_replica(tricky: DeploymentHandle) -> None:
    gen = tricky.options(stream=True, method_name="forever").remote()
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.cancel()
    deadline = time.monotonic() + 3
    while not tricky.was_stopped.remote().result():
        assert time.monotonic() < deadline, "the generator kept running after the consumer left"
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["break", "close", "async-break"])
def test_break_and_close_stop_the_replica_generator(serve_instance, how: str) -> None:
    handle = serve.run(Tricky.bind(), name=f"tricky-{how}", route_prefix=f"/tricky-{how}")
    forever = handle.options(stream=True, method_name="forever")
    if how == "break":
        for i in forever.remote():  # the generator is dropped when the loop breaks
            if i == 2:
                break
    elif how == "close":
        gen = forever.remote()
        next(gen)
        gen.close()
    else:
        async def consume() -> None:
            async for i in forever.remote():
                if i == 2:
                    break

        asyncio.run(consume())
    deadline = time.monotonic() + 3
    while not handle.was_stopped.remote().result():
        assert time.monotonic() < deadline, f"the generator kept running after {how}"
        time.sleep(0.05)


def test_stream_of_a_non_generator_is_a_clear_error(tricky: DeploymentHandle) -> None:
    with pytest.raises(TypeError, match="'not_a_generator' .* but it did not return a generator"):
        list(tricky.options(stream=True, method_name="not_a_generator").remote())


def test_streams_are_deleted_after_reading(serve_instance, tricky: DeploymentHandle) -> None:
    # Given streams that end normally, with an error, and by the consumer leaving
    for _ in range(3):
        with pytest.raises(Midway):
            list(tricky.options(stream=True, method_name="fails").remote(2))
        gen = tricky.options(stream=True, method_name="forever").remote()
        next(gen)
        gen.cancel()
    # Then no stream key is left in Redis
    keys = serve_instance.keys
    deadline = time.monotonic() + 5
    while list(serve_instance.redis.scan_iter(match=keys.stream("*"))):
        assert time.monotonic() < deadline, "stream keys were left behind"
        time.sleep(0.05)
