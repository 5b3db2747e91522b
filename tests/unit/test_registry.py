"""Registry records against fakeredis (no scripts involved)."""

from __future__ import annotations

import fakeredis
import pytest

from broker.keys import Keys
from broker.registry import Registry, RouteConflictError


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
