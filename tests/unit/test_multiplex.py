"""``@serve.multiplexed`` and the replica's model caches, in one event loop, without
processes or Redis (routing is tested in test_mux.py against Redis)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from actors import serve
from actors.multiplex import model_id_from_headers, uses_multiplexing
from actors.runtime import multiplex
from actors.runtime.multiplex import ModelCache, current_model


class FakeHoldings:
    """What a replica would tell routing, in order."""

    def __init__(self) -> None:
        self.said: list[tuple[str, str]] = []

    async def hold(self, model_ids: Iterable[str]) -> None:
        self.said += [("hold", m) for m in model_ids]

    async def drop(self, model_id: str) -> None:
        self.said.append(("drop", model_id))


@pytest.fixture
def holdings() -> Iterator[FakeHoldings]:
    """This process acts as a replica, reporting to a fake; its caches go at the end."""
    fake = FakeHoldings()
    multiplex.attach(fake)
    yield fake
    multiplex.attach(None)
    multiplex._function_caches.clear()
    multiplex._caches.clear()
    gc.collect()  # a cache and its object form a cycle: free them (their models with them) now


class Model:
    """A model that records its unloading; ``__del__`` is what mqserve calls on eviction."""

    unloaded: list[str] = []

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id

    def __del__(self) -> None:
        Model.unloaded.append(self.model_id)


class AsyncModel:
    unloaded: list[str] = []

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id

    async def __del__(self) -> None:
        await asyncio.sleep(0)
        AsyncModel.unloaded.append(self.model_id)


class Deployment:
    def __init__(self) -> None:
        self.loads: list[str] = []

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> Model:
        self.loads.append(model_id)
        await asyncio.sleep(0.01)
        return Model(model_id)


# The decorator -------------------------------------------------------------------------------
def test_valid_loaders_take_the_model_id_after_self_or_alone() -> None:
    @serve.multiplexed
    async def bare(model_id: str) -> str:
        return model_id

    @serve.multiplexed(max_num_models_per_replica=-1)
    async def unlimited(model_id: str) -> str:
        return model_id

    class Loaders:
        @serve.multiplexed(max_num_models_per_replica=1)
        async def method(self, model_id: str) -> str:
            return model_id

    assert callable(bare) and callable(unlimited) and callable(Loaders.method)


@pytest.mark.parametrize("decorate, error", [
    (lambda: serve.multiplexed(max_num_models_per_replica="1"), TypeError),
    (lambda: serve.multiplexed(max_num_models_per_replica=True), TypeError),
    (lambda: serve.multiplexed(max_num_models_per_replica=0), ValueError),
    (lambda: serve.multiplexed(max_num_models_per_replica=-2), ValueError),
])
def test_max_num_models_per_replica_must_be_a_positive_int_or_minus_one(decorate: Any, error: type) -> None:
    with pytest.raises(error, match="max_num_models_per_replica"):
        decorate()


def _sync(model_id: str) -> str:
    return model_id


async def _no_id() -> None:
    return None


async def _too_many(self: Any, model_id: str, extra: int) -> None:
    return None


class _NotAFunction:
    pass


@pytest.mark.parametrize("target, match", [
    (_sync, "async def"), (_no_id, "takes 0 parameters"), (_too_many, "takes 3 parameters"),
    (_NotAFunction, "async function or method"),
])
@pytest.mark.parametrize("with_options", [False, True])
def test_a_loader_must_be_async_and_take_the_model_id(target: Any, match: str, with_options: bool) -> None:
    with pytest.raises(TypeError, match=match):
        serve.multiplexed(max_num_models_per_replica=1)(target) if with_options else serve.multiplexed(target)


def test_outside_a_request_there_is_no_model_id() -> None:
    assert serve.get_multiplexed_model_id() == ""
    context = contextvars.copy_context()
    context.run(current_model.set, "m1")
    assert context.run(serve.get_multiplexed_model_id) == "m1"


def test_a_loader_called_outside_a_replica_says_so() -> None:
    with pytest.raises(RuntimeError, match="can only be used within a deployment"):
        asyncio.run(Deployment().get_model("m1"))


@serve.multiplexed
async def _module_loader(model_id: str) -> str:
    return model_id


async def _function_deployment(text: str) -> str:
    return str(await _module_loader(serve.get_multiplexed_model_id())) + text


def test_deployments_with_a_loader_are_found_for_routing() -> None:
    assert uses_multiplexing(Deployment)
    assert uses_multiplexing(_function_deployment)  # a function calling a loader by its global name
    assert not uses_multiplexing(Model)
    assert not uses_multiplexing(_sync)


@pytest.mark.parametrize("headers, expected", [
    ([(b"serve_multiplexed_model_id", b"m1")], "m1"),
    ([(b"Serve-Multiplexed-Model-Id", b"m2")], "m2"),
    ([(b"content-type", b"text/plain")], ""),
])
def test_the_http_header_names_the_model(headers: list[tuple[bytes, bytes]], expected: str) -> None:
    assert model_id_from_headers(headers) == expected


# The cache ------------------------------------------------------------------------------------
def test_the_least_recently_used_model_is_evicted_and_unloaded_first(holdings: FakeHoldings) -> None:
    deployment = Deployment()
    Model.unloaded.clear()

    async def main() -> None:
        for model_id in ["a", "b", "a", "c", "a", "b"]:
            model = await deployment.get_model(model_id)
            assert model.model_id == model_id

    asyncio.run(main())
    # a, b loaded; a used again; c evicts b (least recently used); b evicts c
    assert deployment.loads == ["a", "b", "c", "b"]
    assert Model.unloaded == ["b", "c"]  # each __del__ once: not again when Python freed them
    assert holdings.said == [("hold", "a"), ("hold", "b"), ("hold", "c"), ("drop", "b"), ("hold", "b"),
                             ("drop", "c")]


def test_concurrent_requests_for_a_loading_model_share_one_load(holdings: FakeHoldings) -> None:
    deployment = Deployment()

    async def main() -> list[Model]:
        return await asyncio.gather(*[deployment.get_model("a") for _ in range(5)])

    models = asyncio.run(main())
    assert deployment.loads == ["a"]
    assert all(m is models[0] for m in models)


def test_a_cancelled_request_does_not_cancel_the_load_others_wait_for(holdings: FakeHoldings) -> None:
    loads: list[str] = []

    async def main() -> tuple[str, bool]:
        gate = asyncio.Event()

        async def load(model_id: str) -> str:
            loads.append(model_id)
            await gate.wait()
            return model_id.upper()

        cache = ModelCache(load, 1, holdings)
        first = asyncio.ensure_future(cache.get("a"))
        second = asyncio.ensure_future(cache.get("a"))
        await asyncio.sleep(0.01)
        first.cancel()  # the request that started the load goes away
        await asyncio.sleep(0.01)
        gate.set()
        return await second, first.cancelled()

    assert asyncio.run(main()) == ("A", True)
    assert loads == ["a"]


def test_loads_run_one_at_a_time_and_the_cache_never_exceeds_its_size(holdings: FakeHoldings) -> None:
    async def main() -> tuple[list[str], list[str]]:
        running, order = 0, []

        async def load(model_id: str) -> str:
            nonlocal running
            running += 1
            assert running == 1
            await asyncio.sleep(0.01)
            running -= 1
            order.append(model_id)
            return model_id

        cache = ModelCache(load, 1, holdings)
        await asyncio.gather(*[cache.get(m) for m in ("1", "2", "3")])
        return order, list(cache.models)

    assert asyncio.run(main()) == (["1", "2", "3"], ["3"])


def test_async_del_is_awaited_and_its_error_reaches_the_request_that_needed_room(holdings: FakeHoldings) -> None:
    class Fragile:
        def __init__(self, model_id: str) -> None:
            self.model_id = model_id

        async def __del__(self) -> None:
            raise RuntimeError(f"{self.model_id} is dead")

    async def main() -> None:
        AsyncModel.unloaded.clear()

        async def load_async(model_id: str) -> AsyncModel:
            return AsyncModel(model_id)

        cache = ModelCache(load_async, 1, holdings)
        await cache.get("x")
        await cache.get("y")
        assert AsyncModel.unloaded == ["x"]
        await cache.unload_all()  # as the replica does when it stops
        assert AsyncModel.unloaded == ["x", "y"]

        async def load_fragile(model_id: str) -> Fragile:
            return Fragile(model_id)

        fragile = ModelCache(load_fragile, 1, holdings)
        await fragile.get("1")
        with pytest.raises(RuntimeError, match="1 is dead"):
            await fragile.get("2")
        assert list(fragile.models) == []  # as in Ray: the evicted model is gone, the new one not loaded

    asyncio.run(main())


def test_a_failed_load_is_forgotten_and_tried_again(holdings: FakeHoldings) -> None:
    attempts: list[str] = []

    async def main() -> str:
        async def load(model_id: str) -> str:
            attempts.append(model_id)
            if len(attempts) == 1:
                raise OSError("storage unreachable")
            return model_id

        cache = ModelCache(load, 2, holdings)
        with pytest.raises(OSError, match="storage unreachable"):
            await cache.get("a")
        return str(await cache.get("a"))

    assert asyncio.run(main()) == "a"
    assert attempts == ["a", "a"]
    assert holdings.said == [("hold", "a"), ("drop", "a"), ("hold", "a")]


@pytest.mark.parametrize("bad, error", [(1, TypeError), ("", ValueError)])
def test_a_model_id_is_a_non_empty_string(holdings: FakeHoldings, bad: Any, error: type) -> None:
    with pytest.raises(error, match="model ID"):
        asyncio.run(Deployment().get_model(bad))


def test_stopping_unloads_every_model(holdings: FakeHoldings) -> None:
    Model.unloaded.clear()

    async def main() -> None:
        deployment = Deployment()
        await deployment.get_model("a")
        await deployment.get_model("b")
        await multiplex.unload_all()

    asyncio.run(main())
    assert sorted(Model.unloaded) == ["a", "b"]


def test_a_batch_holds_requests_for_one_model(holdings: FakeHoldings) -> None:
    class Batched:
        def __init__(self) -> None:
            self.batches: list[tuple[str, list[int]]] = []

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
        async def run(self, items: list[int]) -> list[str]:
            model = serve.get_multiplexed_model_id()
            self.batches.append((model, items))
            return [f"{model}:{i}" for i in items]

    target = Batched()

    async def call(model: str, i: int) -> str:
        current_model.set(model)  # as the replica sets it for each request
        return str(await target.run(i))

    async def main() -> list[str]:
        return await asyncio.gather(*[asyncio.ensure_future(call("ab"[i % 2], i)) for i in range(6)])

    assert asyncio.run(main()) == [f"{'ab'[i % 2]}:{i}" for i in range(6)]
    assert sorted((m, sorted(items)) for m, items in target.batches) == [("a", [0, 2, 4]), ("b", [1, 3, 5])]


def test_a_handle_names_its_model_with_a_string() -> None:
    from actors.handle import DeploymentHandle

    handle = DeploymentHandle("Models", "app", _redis_url="redis://unused", _namespace="ns", _result_ttl_ms=1000)
    assert handle.options(multiplexed_model_id="m1").options(method_name="f")._model == "m1"
    assert handle.options(multiplexed_model_id="m1").options(multiplexed_model_id="")._model == ""
    with pytest.raises(TypeError, match="multiplexed_model_id must be a str"):
        handle.options(multiplexed_model_id=1)
