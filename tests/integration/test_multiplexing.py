"""Model multiplexing against real processes: ``@serve.multiplexed`` loaders, requests
routed to the replicas holding their model (by handle and by HTTP header), eviction,
status, cancellation, backpressure, a replica's death and an upgrade. Each test runs in
local mode (private Redis, one node, gateway) and in cluster mode (TCP Redis, a
separate worker and gateway)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors import serve
from actors.exceptions import BackPressureError, ReplicaDiedError, RequestCancelledError
from actors.handle import DeploymentHandle
from tests.cluster import cluster_on, free_port, poll
from tests.conftest import ROOT
from tests.procs import wait_until_gone


@pytest.fixture(scope="module", params=["local", "cluster"])
def mode(request: Any, redis_url: str) -> Iterator[tuple[str, int]]:
    """('local' or 'cluster', the gateway's port)."""
    if request.param == "cluster":
        with cluster_on(redis_url, gateway=True, prefix="mux") as (_, port):
            yield "cluster", port
        return
    marker = f"mux{uuid.uuid4().hex[:8]}"
    saved = dict(os.environ)
    port = free_port()
    os.environ.update(MQSERVE_NAMESPACE=marker, MQSERVE_HTTP_PORT=str(port))
    os.environ.pop("MQSERVE_REDIS_URL", None)
    try:
        serve.start()
        yield "local", port
    finally:
        serve.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        assert wait_until_gone(marker) == [], "processes left behind"


async def _wait_for(gate: str) -> None:
    """Wait (with a deadline) until the test creates ``gate``."""
    for _ in range(3000):
        if os.path.exists(gate):
            return
        await asyncio.sleep(0.01)


class Unloading:
    """A model that says when it is unloaded (its ``__del__``)."""

    def __init__(self, model_id: str, unloaded: list[str]) -> None:
        self.model_id, self.unloaded = model_id, unloaded

    def __del__(self) -> None:
        self.unloaded.append(self.model_id)


@serve.deployment(num_replicas=2)
class Models:
    def __init__(self) -> None:
        self.loads: list[str] = []
        self.unloaded: list[str] = []

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> Unloading:
        self.loads.append(model_id)
        return Unloading(model_id, self.unloaded)

    async def __call__(self, gate: Any = "") -> dict[str, Any]:
        """``gate``: a file to wait for (handle calls), or the HTTP request."""
        model = await self.get_model(serve.get_multiplexed_model_id())
        if isinstance(gate, str) and gate:
            await _wait_for(gate)
        return {"pid": os.getpid(), "model": model.model_id, "loads": list(self.loads),
                "unloaded": list(self.unloaded)}


def _call(handle: DeploymentHandle, model: str, gate: str = "") -> dict[str, Any]:
    return handle.options(multiplexed_model_id=model).remote(gate).result(timeout_s=30)  # type: ignore[no-any-return]


def _models(app: str, dep: str) -> dict[str, list[str]]:
    return serve.status().applications[app].deployments[dep].multiplexed_model_ids


def test_requests_for_a_model_go_to_the_replica_holding_it(mode: tuple[str, int]) -> None:
    _, port = mode
    handle = serve.run(Models.bind(), name="affinity", route_prefix="/affinity")
    # Given each of four models used once (two per replica, each replica's room)
    pids = {m: _call(handle, m)["pid"] for m in "abcd"}
    assert len(set(pids.values())) == 2
    # When they are asked for again, in another order, by handle and over HTTP
    for m in "dcbaabcd":
        assert _call(handle, m)["pid"] == pids[m]
        reply = httpx.get(f"http://127.0.0.1:{port}/affinity", headers={"serve_multiplexed_model_id": m},
                          timeout=30).json()
        assert (reply["pid"], reply["model"]) == (pids[m], m)
    # Then no model was loaded twice, and status says which replica holds which
    loads = {reply["pid"]: reply["loads"] for reply in (_call(handle, m) for m in "abcd")}
    assert sorted(m for held in loads.values() for m in held) == ["a", "b", "c", "d"]
    assert sorted(sorted(held) for held in _models("affinity", "Models").values()) == \
        sorted(sorted(held) for held in loads.values())
    serve.delete("affinity")


def test_concurrent_first_requests_for_a_model_load_it_once(mode: tuple[str, int]) -> None:
    handle = serve.run(Models.options(max_ongoing_requests=10).bind(), name="burst", route_prefix="/burst")

    async def burst() -> list[dict[str, Any]]:
        model = handle.options(multiplexed_model_id="m")
        return await asyncio.gather(*[model.remote() for _ in range(10)])

    replies = asyncio.run(burst())
    # Routed to one replica from the first (it holds m from then on), which loaded m once
    assert len({reply["pid"] for reply in replies}) == 1
    assert max(len(reply["loads"]) for reply in replies) == 1
    serve.delete("burst")


@serve.deployment
class Preloaded(Models.func_or_class):  # type: ignore[name-defined,misc]
    async def __init__(self) -> None:
        super().__init__()
        await self.get_model("warm")  # a constructor may load models, as in Ray


def test_a_model_loaded_by_the_constructor_is_held_and_routed_to(mode: tuple[str, int]) -> None:
    handle = serve.run(Preloaded.bind(), name="preloaded", route_prefix="/preloaded")
    assert list(_models("preloaded", "Preloaded").values()) == [["warm"]]
    assert _call(handle, "warm")["loads"] == ["warm"]
    serve.delete("preloaded")


def test_the_least_recently_used_model_is_unloaded_and_status_follows(mode: tuple[str, int]) -> None:
    handle = serve.run(Models.options(num_replicas=1).bind(), name="lru", route_prefix="/lru")
    for m in ["1", "2", "1", "3"]:  # 3 evicts 2, the least recently used
        reply = _call(handle, m)
    assert reply["loads"] == ["1", "2", "3"] and reply["unloaded"] == ["2"]
    assert list(_models("lru", "Models").values()) == [["1", "3"]]
    serve.delete("lru")


def test_a_busy_holder_passes_the_next_request_to_another_replica(mode: tuple[str, int], tmp_path: Path) -> None:
    handle = serve.run(Models.options(max_ongoing_requests=1).bind(), name="busy", route_prefix="/busy")
    gate = str(tmp_path / "open")
    # Given a request for model 1 running on its replica, which has one slot
    first = handle.options(multiplexed_model_id="1").remote(gate)
    poll(lambda: len(_models("busy", "Models")) == 1, what="a replica to hold model 1")
    # When another request for model 1 comes, it goes to the other replica, which loads it
    second = handle.options(multiplexed_model_id="1").remote(gate)
    poll(lambda: len(_models("busy", "Models")) == 2, what="both replicas to hold model 1")
    Path(gate).touch()
    assert first.result(timeout_s=30)["pid"] != second.result(timeout_s=30)["pid"]
    serve.delete("busy")


@serve.deployment
class Downstream:
    def __call__(self) -> str:
        return serve.get_multiplexed_model_id()


@serve.deployment
class Upstream:
    def __init__(self, downstream: DeploymentHandle) -> None:
        self.downstream = downstream

    async def __call__(self) -> list[str]:
        before = serve.get_multiplexed_model_id()
        other = await self.downstream.options(multiplexed_model_id="bar").remote()
        plain = await self.downstream.remote()
        return [before, other, plain, serve.get_multiplexed_model_id()]


def test_the_model_id_belongs_to_each_call(mode: tuple[str, int]) -> None:
    # A call made while serving a request for "foo" names its own model (or none), as in Ray
    handle = serve.run(Upstream.bind(Downstream.bind()), name="ids", route_prefix="/ids")
    assert handle.options(multiplexed_model_id="foo").remote().result(timeout_s=30) == ["foo", "bar", "", "foo"]
    assert handle.remote().result(timeout_s=30) == ["", "bar", "", ""]
    serve.delete("ids")


def test_a_request_waiting_for_a_full_replica_can_be_cancelled_or_refused(mode: tuple[str, int],
                                                                          tmp_path: Path) -> None:
    handle = serve.run(Models.options(num_replicas=1, max_ongoing_requests=1, max_queued_requests=1).bind(),
                       name="full", route_prefix="/full")
    gate = str(tmp_path / "open")
    running = handle.options(multiplexed_model_id="m").remote(gate)
    poll(lambda: _models("full", "Models"), what="the replica to hold the model")
    # Given a second request waiting for the only replica's only slot
    waiting = handle.options(multiplexed_model_id="m").remote(gate)
    # Then a third is refused (max_queued_requests=1)
    with pytest.raises(BackPressureError):
        handle.options(multiplexed_model_id="m").remote(gate).result(timeout_s=30)
    # And the waiting one, cancelled, never runs
    waiting.cancel()
    with pytest.raises(RequestCancelledError):
        waiting.result(timeout_s=30)
    Path(gate).touch()
    assert running.result(timeout_s=30)["loads"] == ["m"]
    assert _call(handle, "m")["loads"] == ["m"]
    serve.delete("full")


@serve.deployment
class Batched:
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.2)
    async def run(self, items: list[int]) -> list[str]:
        model = serve.get_multiplexed_model_id()
        return [f"{model}:{i}:{len(items)}" for i in items]

    async def __call__(self, i: int) -> str:
        return await self.run(i)


def test_a_batch_holds_the_requests_of_one_model(mode: tuple[str, int]) -> None:
    handle = serve.run(Batched.bind(), name="batched", route_prefix="/batched")

    async def main() -> list[str]:
        return await asyncio.gather(*[handle.options(multiplexed_model_id="ab"[i % 2]).remote(i) for i in range(8)])

    replies = [reply.split(":") for reply in asyncio.run(main())]
    assert [(model, int(i)) for model, i, _ in replies] == [("ab"[i % 2], i) for i in range(8)]
    assert all(int(size) <= 4 for _, _, size in replies)  # never a batch of both models
    serve.delete("batched")


@serve.deployment(num_replicas=2, max_ongoing_requests=1)
class Mortal:
    @serve.multiplexed(max_num_models_per_replica=1)
    async def get_model(self, model_id: str) -> str:
        return model_id

    async def __call__(self) -> int:
        await self.get_model(serve.get_multiplexed_model_id())
        return os.getpid()

    def die(self) -> None:
        os._exit(1)


def test_a_dead_replicas_models_are_served_by_the_others(mode: tuple[str, int]) -> None:
    handle = serve.run(Mortal.bind(), name="mortal", route_prefix="/mortal").options(multiplexed_model_id="m")
    holder = handle.remote().result(timeout_s=30)
    # When the replica holding model m dies (the call for m goes to it)
    with pytest.raises(ReplicaDiedError):
        handle.die.remote().result(timeout_s=30)
    # Then requests for m are answered by the other replica, which loads m and keeps it
    pids = {handle.remote().result(timeout_s=60) for _ in range(5)}
    assert len(pids) == 1 and holder not in pids
    serve.delete("mortal")


@serve.deployment
class Recorder:
    def __init__(self) -> None:
        self.unloaded: set[str] = set()

    def add(self, model_id: str) -> None:
        self.unloaded.add(model_id)

    def get(self) -> set[str]:
        return self.unloaded


class Recorded:
    def __init__(self, model_id: str, recorder: DeploymentHandle) -> None:
        self.model_id, self.recorder = model_id, recorder

    def __del__(self) -> None:
        self.recorder.add.remote(self.model_id).result(timeout_s=30)


@serve.deployment
class Upgraded:
    def __init__(self, recorder: DeploymentHandle) -> None:
        self.recorder = recorder

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> Recorded:
        return Recorded(model_id, self.recorder)

    async def __call__(self) -> str:
        return (await self.get_model(serve.get_multiplexed_model_id())).model_id


def test_a_stopping_replica_unloads_its_models(mode: tuple[str, int]) -> None:
    recorder = serve.run(Recorder.bind(), name="recorder", route_prefix="/recorder")
    handle = serve.run(Upgraded.bind(recorder), name="upgraded", route_prefix="/upgraded")
    assert handle.options(multiplexed_model_id="1").remote().result(timeout_s=30) == "1"
    assert recorder.get.remote().result(timeout_s=30) == set()
    # When the app is deployed again (its replica replaced), the old replica unloads model 1
    serve.run(Upgraded.options(max_ongoing_requests=4).bind(recorder), name="upgraded", route_prefix="/upgraded")
    poll(lambda: recorder.get.remote().result(timeout_s=30) == {"1"}, what="model 1 to be unloaded")
    serve.delete("upgraded")
    serve.delete("recorder")


def test_mqserve_status_lists_the_models_of_each_replica(mode: tuple[str, int], redis_url: str) -> None:
    if mode[0] != "cluster":
        pytest.skip("mqserve status reads a cluster's Redis")
    handle = serve.run(Models.options(num_replicas=1).bind(), name="cli", route_prefix="/cli")
    _call(handle, "alpha")
    env = {**os.environ, "PYTHONPATH": ROOT, "MQSERVE_REDIS_URL": redis_url}
    out = subprocess.run([sys.executable, "-m", "actors.runtime.cli", "status", "--json"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    held = json.loads(out)["applications"]["cli"]["deployments"]["Models"]["multiplexed_model_ids"]
    assert list(held.values()) == [["alpha"]]
    table = subprocess.run([sys.executable, "-m", "actors.runtime.cli", "status"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert "MULTIPLEXED MODELS" in table and "alpha" in table
    serve.delete("cli")
