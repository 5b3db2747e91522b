"""actors.runtime.instances: records of local instances, and choosing one."""

from __future__ import annotations

import os

import pytest

from actors.runtime import instances


@pytest.fixture
def runtime(tmp_path, monkeypatch) -> str:
    path = str(tmp_path / "rt")
    monkeypatch.setenv("MQSERVE_RUNTIME_DIR", path)
    monkeypatch.delenv("MQSERVE_REDIS_URL", raising=False)
    return path


def _fake(runtime: str, namespace: str) -> str:
    """A record of this process (alive) for a socket that exists."""
    sock = os.path.join(os.path.dirname(runtime), f"{namespace}.sock")
    open(sock, "w").close()
    path = instances.register(f"unix://{sock}", namespace, http="127.0.0.1:8000")
    assert path is not None
    return path


def test_register_live_unregister(runtime) -> None:
    path = _fake(runtime, "one")
    assert oct(os.stat(runtime).st_mode & 0o777) == "0o700" and oct(os.stat(path).st_mode & 0o777) == "0o600"
    [found] = instances.live()
    assert (found.namespace, found.pid, found.http) == ("one", os.getpid(), "127.0.0.1:8000")
    assert instances.locate() == (found.url, "one")
    instances.unregister(path)
    assert instances.live() == []


def test_a_record_whose_socket_is_gone_is_stale(runtime) -> None:
    path = _fake(runtime, "gone")
    os.unlink(instances.live()[0].url[len("unix://"):])
    assert instances.live() == [] and not os.path.exists(path)


def test_a_directory_others_may_write_in_is_not_read(runtime) -> None:
    _fake(runtime, "one")
    os.chmod(runtime, 0o777)
    assert instances.live() == []
    with pytest.raises(instances.LocalInstanceError, match="no local mqserve instance"):
        instances.find()


def test_choosing_among_several(runtime) -> None:
    _fake(runtime, "one")
    _fake(runtime, "two")
    with pytest.raises(instances.LocalInstanceError, match="2 local mqserve instances are running") as e:
        instances.find(interactive=False)
    assert "--redis-url unix://" in str(e.value)
    assert instances.find(interactive=True, ask=lambda q: "2").namespace == "two"
    with pytest.raises(instances.LocalInstanceError, match="not one of 1-2"):
        instances.find(interactive=True, ask=lambda q: "3")


def test_an_explicit_url_wins(runtime, monkeypatch) -> None:
    _fake(runtime, "one")
    monkeypatch.setenv("MQSERVE_NAMESPACE", "ns")
    assert instances.locate("redis://h:1/0") == ("redis://h:1/0", "ns")
    monkeypatch.setenv("MQSERVE_REDIS_URL", "redis://e:2/0")
    assert instances.locate() == ("redis://e:2/0", "ns")
