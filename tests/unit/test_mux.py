"""Routing of multiplexed deployments (``broker/lua/mux.lua``, ``broker/mux.py``) against
a real Redis: where ``enqueue.lua`` puts each request, and how requests come back when
a replica leaves, dies, or its app is deleted."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from broker import calls, codec, mux, scripts
from broker.connection import connect
from broker.keys import Keys
from broker.queue import ServeBroker
from broker.registry import Registry

APP, DEP = "app", "Models"


@pytest.fixture
def keys(redis_url: str) -> Iterator[Keys]:
    keys = Keys(f"u{uuid.uuid4().hex[:8]}")
    yield keys
    Registry(connect(redis_url), keys).clear_namespace()


def inbox(keys: Keys) -> str:
    return keys.inbox("caller")


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = connect(redis_url)
    yield client
    client.close()


def deploy(r: redis.Redis, keys: Keys, *, multiplexed: bool = True, max_queued: int = -1,
           members: dict[str, int] | None = None) -> None:
    """A deployment hash as ``serve.run`` writes it, and replicas that joined its routing."""
    fields = {"spec": b"-", "config": "{}", "version": "v1", "max_queued": max_queued}
    if multiplexed:
        fields["mux"] = 1
    r.hset(keys.deployment(APP, DEP), mapping=fields)  # type: ignore[arg-type]
    for rid, capacity in (members or {}).items():
        mux.Membership(keys, APP, DEP, rid, capacity).join(r)


def message(keys: Keys, model: str = "") -> bytes:
    return codec.encode_request(req_id=codec.new_request_id(), method="__call__",
                                payload=codec.encode_args((), {}), reply_to=inbox(keys), model=model)


def take_one(consumer: Any, timeout_s: float = 10) -> Any:
    """The next message a consumer takes (it answers None while it found nothing)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        taken = next(consumer)
        if taken is not None:
            return taken
    raise AssertionError("the consumer took nothing")


def send(r: redis.Redis, keys: Keys, raw: bytes, model: str = "") -> int:
    batch = scripts.Batch()
    req_id = codec.decode_request(raw)["message_id"]
    calls.enqueue(batch, keys, APP, DEP, req_id, raw, (), 60_000, model)
    reply = batch.execute(r)[0]
    refused = calls.refusal(reply)
    return int(reply) if refused is None else refused[0]


def where(r: redis.Redis, keys: Keys, raw: bytes, replicas: tuple[str, ...] = ("r1", "r2", "r3")) -> str:
    """Which list holds ``raw``: 'queue' (the deployment's) or a replica id."""
    for name, key in [("queue", keys.queue(APP, DEP)), *((rid, keys.own_queue(rid)) for rid in replicas)]:
        if raw in r.lrange(key, 0, -1):
            return name
    return "nowhere"


def held(r: redis.Redis, keys: Keys, rid: str) -> set[str]:
    return {m.decode() for m in r.smembers(keys.models(rid))}


def test_a_deployment_without_a_loader_queues_as_before(r: redis.Redis, keys: Keys) -> None:
    # Given a deployment that does not multiplex, whose replica (somehow) is a member
    deploy(r, keys, multiplexed=False, members={"r1": 5})
    # When a request for a model comes
    raw = message(keys, "m1")
    send(r, keys, raw, "m1")
    # Then it waits in the deployment's queue, for any replica
    assert where(r, keys, raw) == "queue"


def test_a_request_goes_to_the_least_loaded_replica_holding_its_model(r: redis.Redis, keys: Keys) -> None:
    # Given three replicas; r2 and r3 hold m1, and r2 is busier
    deploy(r, keys, members={"r1": 5, "r2": 5, "r3": 5})
    r.sadd(keys.models("r2"), "m1")
    r.sadd(keys.models("r3"), "m1", "m2")
    r.lpush(keys.processing("r2"), b"busy")
    # When requests for m1 come
    first, second = message(keys, "m1"), message(keys, "m1")
    send(r, keys, first, "m1")
    send(r, keys, second, "m1")
    # Then they go to the holders, the least loaded first (r1, idle, does not hold m1)
    assert where(r, keys, first) == "r3"
    assert where(r, keys, second) in ("r2", "r3")


def test_a_model_nobody_holds_goes_to_the_replica_holding_fewest_and_stays_there(r: redis.Redis,
                                                                                  keys: Keys) -> None:
    # Given r1 holding two models and r2 one
    deploy(r, keys, members={"r1": 5, "r2": 5})
    r.sadd(keys.models("r1"), "a", "b")
    r.sadd(keys.models("r2"), "c")
    # When a request for a new model comes, then another
    first, second = message(keys, "new"), message(keys, "new")
    send(r, keys, first, "new")
    send(r, keys, second, "new")
    # Then the first goes to r2, which is now known to hold it, so the second follows
    assert (where(r, keys, first), where(r, keys, second)) == ("r2", "r2")
    assert held(r, keys, "r2") == {"c", "new"}


def test_a_full_holder_is_passed_over_then_all_full_waits_in_the_deployment_queue(r: redis.Redis,
                                                                                  keys: Keys) -> None:
    # Given r1 holding m1 with one slot, taken; r2 with one free slot
    deploy(r, keys, members={"r1": 1, "r2": 1})
    r.sadd(keys.models("r1"), "m1")
    r.lpush(keys.processing("r1"), b"running")
    # When two requests for m1 come
    first, second = message(keys, "m1"), message(keys, "m1")
    send(r, keys, first, "m1")
    send(r, keys, second, "m1")
    # Then the first goes to the free replica (which loads m1), and the second, with
    # every replica full, waits in the deployment's queue
    assert where(r, keys, first) == "r2"
    assert where(r, keys, second) == "queue"


def test_max_queued_requests_counts_what_waits_for_any_replica(r: redis.Redis, keys: Keys) -> None:
    # Given one replica with one slot and max_queued_requests=1
    deploy(r, keys, max_queued=1, members={"r1": 1})
    # When three requests come
    results = [send(r, keys, message(keys, "m"), "m") for _ in range(3)]
    # Then the first is routed to the replica, the second waits, the third is refused
    assert results[:2] == [1, 1] and results[2] == -2


def test_requests_without_a_model_go_to_the_least_loaded_replica(r: redis.Redis, keys: Keys) -> None:
    deploy(r, keys, members={"r1": 5, "r2": 5})
    r.lpush(keys.own_queue("r1"), b"waiting")
    raw = message(keys)
    send(r, keys, raw)
    assert where(r, keys, raw) == "r2"
    assert held(r, keys, "r2") == set()


def test_cancel_and_withdraw_find_a_request_routed_to_a_replica(r: redis.Redis, keys: Keys) -> None:
    # Given two requests routed to r1's own queue
    deploy(r, keys, members={"r1": 5})
    raws = [message(keys, "m"), message(keys, "m")]
    for raw in raws:
        send(r, keys, raw, "m")
    # When one is cancelled and the other withdrawn
    batch = scripts.Batch()
    calls.cancel(batch, keys, APP, DEP, codec.decode_request(raws[0])["message_id"], raws[0], 60_000, held=False)
    calls.withdraw(batch, keys, APP, DEP, raws[1])
    # Then both were taken back before any replica took them
    assert batch.execute(r) == [1, 1]
    assert r.llen(keys.own_queue("r1")) == 0


def test_a_leaving_replica_hands_its_requests_to_others(r: redis.Redis, keys: Keys) -> None:
    # Given r1 with two requests routed to it and one taken but not started, r2 idle
    deploy(r, keys, members={"r1": 5, "r2": 5})
    r.sadd(keys.models("r1"), "m")
    routed = [message(keys, "m"), message(keys, "m")]
    for raw in routed:
        send(r, keys, raw, "m")
    taken = message(keys, "m")
    r.lpush(keys.processing("r1"), taken)
    # When r1 leaves (it drains)
    assert mux.requeue(r, keys, APP, DEP, "r1", [taken], leave=True) == 3
    # Then r2 has all three, r1 is no longer routed to, and its models are forgotten
    assert [where(r, keys, raw) for raw in [*routed, taken]] == ["r2", "r2", "r2"]
    assert r.hkeys(keys.mux_members(APP, DEP)) == [b"r2"]
    assert not r.exists(keys.models("r1"), keys.processing("r1"), keys.own_queue("r1"))
    # And the request it had taken runs first there
    assert r.lindex(keys.own_queue("r2"), -1) == taken


def test_a_dead_replicas_routed_requests_go_to_others_unstarted(r: redis.Redis, keys: Keys) -> None:
    # Given r1 with a request routed to it and one it was running when it died
    deploy(r, keys, members={"r1": 5, "r2": 5})
    routed, running = message(keys, "m"), message(keys, "m")
    send(r, keys, routed, "m")
    r.lpush(keys.processing("r1"), running)
    # When its node recovers what it held (no retries allowed)
    retried, failed = Registry(r, keys).recover_processing("r1", APP, DEP, 60_000, RuntimeError("died"))
    # Then the running one failed, and the routed one, never started, went to r2
    assert (retried, failed) == (0, 1)
    assert where(r, keys, routed) == "r2"
    assert r.hkeys(keys.mux_members(APP, DEP)) == [b"r2"]


def test_deleting_the_app_fails_the_requests_routed_to_replicas(r: redis.Redis, keys: Keys) -> None:
    registry = Registry(r, keys)
    registry.put_app({"name": APP, "route_prefix": "/", "ingress": DEP, "deployments": [DEP]},
                     {DEP: {"spec": b"-", "config": "{}", "version": "v1", "max_queued": -1, "mux": 1}})
    mux.Membership(keys, APP, DEP, "r1", 5).join(r)
    raw = message(keys, "m")
    send(r, keys, raw, "m")
    assert registry.delete_app(APP, 60_000, RuntimeError("deleted")) == 1
    assert r.lpop(inbox(keys))  # its caller was answered
    assert not r.exists(keys.own_queue("r1"), keys.mux_members(APP, DEP))


def test_a_replica_takes_its_own_queue_then_the_deployments_and_wakes_when_routed_to(
        redis_url: str, r: redis.Redis, keys: Keys) -> None:
    # Given one replica of a multiplexed deployment, with two slots
    deploy(r, keys)
    broker = ServeBroker(redis_url, keys, queue_key=keys.queue(APP, DEP), processing_key=keys.processing("r1"),
                         result_ttl_ms=5000, route=mux.Membership(keys, APP, DEP, "r1", 2))
    consumer = broker.consume(codec.REQUEST_QUEUE, prefetch=2, timeout=5000)
    try:
        # And a request that waited in the deployment's queue (before the replica joined)
        early = message(keys, "m")
        r.lpush(keys.queue(APP, DEP), early)
        # When the replica takes its first request: the waiting one
        first = take_one(consumer)
        assert first.raw == early
        # Then, blocked on its own queue, it wakes as soon as a request is routed to it
        got: list[Any] = []
        taker = threading.Thread(target=lambda: got.append(take_one(consumer)))
        taker.start()
        routed = message(keys, "m")
        send(r, keys, routed, "m")
        taker.join(timeout=5)
        assert [m.raw for m in got] == [routed]
        # And once full, the next request waits in the deployment's queue
        late = message(keys, "m")
        send(r, keys, late, "m")
        assert where(r, keys, late, ("r1",)) == "queue"
        # Which the replica takes as soon as a slot frees, before blocking again
        consumer.ack(first)
        assert take_one(consumer).raw == late
    finally:
        consumer.close()
        broker.close()


def test_the_lua_key_names_are_the_keys_of_keys_py(r: redis.Redis, keys: Keys) -> None:
    deploy(r, keys, members={"r1": 1})
    send(r, keys, message(keys, "m"), "m")
    assert r.llen(keys.own_queue("r1")) == 1 and held(r, keys, "r1") == {"m"}
