"""Registry records: against fakeredis where no script is involved, else a real Redis."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import fakeredis
import pytest

from actors.runtime.controller import Controller
from broker import registry as registry_module
from broker import scripts
from broker.connection import connect
from broker.errors import RouteConflictError
from broker.keys import Keys
from broker.registry import Registry
from tests.cluster import poll


@pytest.fixture
def registry() -> Registry:
    return Registry(fakeredis.FakeRedis(), Keys("unit"))


def _fields(version: str) -> dict:
    return {"spec": b"code", "config": "{}", "version": version, "max_queued": -1}


def test_put_app_registers_and_upgrades(registry: Registry) -> None:
    registry.put_app({"name": "a", "route_prefix": "/", "ingress": "X", "deployments": ["X", "Y"]},
                     {"X": _fields("1"), "Y": _fields("1")})
    assert registry.app("a")["ingress"] == "X"
    assert registry.deployment("a", "Y")["version"] == "1"
    # Upgrading without Y removes Y's record.
    registry.put_app({"name": "a", "route_prefix": "/", "ingress": "X", "deployments": ["X"]}, {"X": _fields("2")})
    assert registry.deployment("a", "Y") is None
    assert registry.deployment("a", "X")["version"] == "2"


def test_route_prefixes_are_unique(registry: Registry) -> None:
    registry.put_app({"name": "a", "route_prefix": "/p", "deployments": []}, {})
    with pytest.raises(RouteConflictError, match="'a'"):
        registry.put_app({"name": "b", "route_prefix": "/p", "deployments": []}, {})
    registry.put_app({"name": "c", "route_prefix": None, "deployments": []}, {})
    registry.put_app({"name": "d", "route_prefix": None, "deployments": []}, {})
    assert set(registry.apps()) == {"a", "c", "d"}


def test_replica_records_and_assignments(registry: Registry) -> None:
    registry.set_replica("a", "X", "r1", {"state": "RUNNING"})
    assert registry.replicas("a", "X")["r1"]["state"] == "RUNNING"
    registry.assign("n1", "r1", {"app": "a", "deployment": "X", "version": "1"})
    assert registry.assignments("n1") == {"r1": {"app": "a", "deployment": "X", "version": "1"}}
    registry.unassign("n1", "r1")
    registry.remove_replica("a", "X", "r1")
    assert registry.assignments("n1") == {} and registry.replicas("a", "X") == {}


# Against a real Redis: Lua scripts, Redis's clock, pub/sub ------------------------------------

@pytest.fixture
def real_registry(redis_url: str) -> Iterator[Registry]:
    registry = Registry(connect(redis_url), Keys(f"u{uuid.uuid4().hex[:8]}"))
    try:
        yield registry
    finally:
        registry.clear_namespace()


def test_liveness_does_not_depend_on_the_machines_clocks(real_registry: Registry, monkeypatch) -> None:
    real_time = time.time
    # Given a worker and a gateway on a machine whose clock is 30 s behind
    monkeypatch.setattr(time, "time", lambda: real_time() - 30)
    real_registry.register_node("skewed", {"host": "h", "pid": 1, "replicas": 0, "max_replicas": None}, 5000)
    real_registry.register_gateway("gateway-skewed", {"host": "h", "port": 1, "pid": 2}, 5000)
    # When the controller runs on a machine whose clock is 30 s ahead
    monkeypatch.setattr(time, "time", lambda: real_time() + 30)
    live = Controller(real_registry, result_ttl_ms=1000)._live_nodes()
    # Then neither is taken for dead: both were heard from just now, by Redis's clock
    assert set(live) == {"skewed"}
    assert set(real_registry.gateways()) == {"gateway-skewed"}
    assert real_registry.nodes()["skewed"]["heartbeat_age_s"] < 1


def test_a_member_whose_alive_key_expires_is_dead_and_buried(real_registry: Registry) -> None:
    # Given a worker and a gateway that heartbeat once with a short TTL, and then stop
    real_registry.register_node("quiet", {"host": "h", "pid": 1, "replicas": 0, "max_replicas": None}, 300)
    real_registry.register_gateway("gateway-quiet", {"host": "h", "port": 1, "pid": 2}, 300)
    assert 0 <= real_registry.nodes()["quiet"]["heartbeat_age_s"] < 0.3
    # Then once their keys expire (in Redis's time) they read as gone
    poll(lambda: real_registry.nodes()["quiet"]["heartbeat_age_s"] is None, timeout_s=5, interval_s=0.02,
         what="the worker's alive key to expire")
    assert real_registry.gateways()["gateway-quiet"]["heartbeat_age_s"] is None
    # And the controller buries the worker and forgets the gateway
    assert Controller(real_registry, result_ttl_ms=1000)._live_nodes() == {}
    assert real_registry.nodes() == {} and real_registry.gateways() == {}


def test_resign_never_releases_a_lease_taken_over_meanwhile(real_registry: Registry) -> None:
    scripts.load_all(real_registry.redis)
    lock = real_registry.keys.controller_lock
    assert real_registry.lead("old", 4000)
    # Given that the lease expires and another process takes it right after the
    # resigning process's first round trip to Redis
    send = real_registry.redis.execute_command
    calls = []

    def first_command_then_takeover(*args, **kwargs):
        try:
            return send(*args, **kwargs)
        finally:
            if not calls:
                calls.append(args[0])
                real_registry.redis.set(lock, "new", px=4000)

    real_registry.redis.execute_command = first_command_then_takeover  # type: ignore[method-assign]
    # When the old holder resigns
    real_registry.resign("old")
    # Then the new holder keeps its lease
    assert calls and real_registry.leader() == "new"


def test_a_follower_closes_the_subscription_it_replaces(real_registry: Registry, monkeypatch) -> None:
    """After an error a follower subscribes again; the old subscription is closed first,
    not left connected (and subscribed) until garbage collection."""
    monkeypatch.setattr(registry_module, "RESUBSCRIBE_S", 30.0)  # a long pause makes the gap visible
    channel = real_registry.keys.events
    stopped = threading.Event()
    seen: list[object] = []

    def handle(message: object) -> None:
        if message is not None:
            seen.append(message)
            raise RuntimeError("a handler that fails")

    follower = threading.Thread(target=real_registry.follow, args=(handle, stopped),
                                kwargs={"every_s": 0.05, "what": "test events"})
    follower.start()
    try:
        subscribers = lambda: real_registry.redis.pubsub_numsub(channel)[0][1]  # noqa: E731
        poll(lambda: subscribers() == 1, timeout_s=10, what="the follower to subscribe")
        real_registry.redis.publish(channel, "{}")
        poll(lambda: seen, timeout_s=10, what="the event to reach the handler")
        poll(lambda: subscribers() == 0, timeout_s=10, what="the failed subscription to close")
    finally:
        stopped.set()
        follower.join(timeout=10)
    assert not follower.is_alive()
