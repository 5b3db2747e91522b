"""The replica's broker against a real Redis: draining before a replica stops."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator

import pytest

from broker import codec
from broker.connection import connect
from broker.keys import Keys
from broker.queue import ServeBroker
from broker.registry import Registry
from tests.cluster import poll


@pytest.fixture
def broker(redis_url: str) -> Iterator[ServeBroker]:
    keys = Keys(f"u{uuid.uuid4().hex[:8]}")
    broker = ServeBroker(redis_url, keys, queue_key=keys.queue("app", "Dep"), processing_key=keys.processing("r1"),
                         result_ttl_ms=5000)
    try:
        yield broker
    finally:
        broker.close()
        Registry(connect(redis_url), keys).clear_namespace()


def test_draining_checks_every_wait_loop_and_ends_when_the_last_request_does(broker: ServeBroker, caplog) -> None:
    caplog.set_level(logging.INFO, logger="broker.queue")
    consumer = broker.consume(codec.REQUEST_QUEUE, prefetch=1, timeout=1000)
    # Given a replica running one request
    broker.client.lpush(broker.queue_key, codec.encode_request(req_id=codec.new_request_id(), method="m",
                                                               payload=codec.encode_args((), {})))
    running = next(consumer)
    assert running is not None
    # When it drains with graceful_shutdown_wait_loop_s=0.05
    outcome: list[bool] = []
    drain = threading.Thread(target=lambda: outcome.append(broker.drain(30, 0.05)))
    drain.start()
    try:
        # Then it checks again every 0.05 s, saying what it waits for, as a Ray replica does
        poll(lambda: len([r for r in caplog.records if "waiting for 1 ongoing request" in r.getMessage()]) >= 3,
             timeout_s=10, what="the drain to check again and log")
        assert outcome == []
        # And it is done as soon as the request is
        consumer.ack(running)
        drain.join(timeout=10)
        assert outcome == [True]
    finally:
        consumer.close()
