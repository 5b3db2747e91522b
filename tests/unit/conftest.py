"""Fixtures of the caller's unit tests: an in-memory Redis, and a CallClient on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors.runtime.caller import CallClient
from tests.unit.caller_setup import KEYS, TTL_MS
from tests.unit.fake_transport import FakeRedis


@pytest.fixture
def fake() -> FakeRedis:
    return FakeRedis()


@pytest.fixture
def client(fake: FakeRedis) -> Iterator[CallClient]:
    client = CallClient("redis://fake", KEYS, result_ttl_ms=TTL_MS, transport=fake.transport())
    try:
        yield client
    finally:
        client.close()
