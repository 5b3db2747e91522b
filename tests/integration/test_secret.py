"""A cluster with MQSERVE_SECRET: it serves as usual, and a forged pickle written straight
into a deployment's queue is refused by the replica without being unpickled."""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import httpx
import pytest
import redis

from actors import serve
from broker import codec
from broker.keys import Keys
from tests.cluster import LocalCluster, cluster_on, poll


class _Payload:
    """Unpickling this creates ``path``: proof that a forged message ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@serve.deployment
class Echo:
    def __call__(self, x):
        return x if not hasattr(x, "url") else "http"

    def count(self, n: int):
        for i in range(n):
            yield i


@pytest.fixture
def signed(redis_url: str) -> Iterator[tuple[LocalCluster, int]]:
    with cluster_on(redis_url, gateway=True, prefix="sec", MQSERVE_SECRET="correct horse battery staple") as both:
        yield both


def test_forged_pickles_in_a_queue_never_run(signed, redis_url: str, tmp_path) -> None:
    cluster, port = signed
    handle = serve.run(Echo.bind(), name="sec", route_prefix="/")
    assert handle.remote(1).result(timeout_s=30) == 1
    assert list(handle.options(stream=True).count.remote(3)) == [0, 1, 2]
    assert httpx.post(f"http://127.0.0.1:{port}/", content=b"hi", timeout=30).text == "http"
    queue = Keys(cluster.namespace).queue("sec", "Echo")
    raw = redis.Redis.from_url(redis_url)
    unsigned = tmp_path / "unsigned-ran"
    wrong_key = tmp_path / "wrong-key-ran"
    raw.lpush(queue, pickle.dumps(_Payload(str(unsigned))))
    codec.use_secret("a guess")
    try:
        forged = codec.seal(pickle.dumps(_Payload(str(wrong_key))))
    finally:
        codec.use_secret("correct horse battery staple")
    raw.lpush(queue, forged)
    # The replica takes both, refuses them, and keeps serving.
    poll(lambda: raw.llen(queue) == 0, what="the replica to take the forged messages")
    assert handle.remote(2).result(timeout_s=30) == 2
    assert not unsigned.exists() and not wrong_key.exists()
    assert raw.llen(Keys(cluster.namespace).processing(next(iter(cluster.registry.replicas("sec", "Echo"))))) == 0


def test_a_caller_without_the_secret_is_refused(signed, redis_url: str) -> None:
    """Its request cannot be trusted, not even its reply address: it is dropped unread,
    and the caller sees its own timeout."""
    cluster, _ = signed
    handle = serve.run(Echo.bind(), name="sec2", route_prefix="/two")
    codec.use_secret(None)  # this process alone forgets it
    try:
        with pytest.raises(TimeoutError):
            handle.remote(5).result(timeout_s=2)
    finally:
        codec.use_secret("correct horse battery staple")
    keys = Keys(cluster.namespace)
    raw = redis.Redis.from_url(redis_url)
    rid = next(iter(cluster.registry.replicas("sec2", "Echo")))
    assert raw.llen(keys.queue("sec2", "Echo")) == 0 and raw.llen(keys.processing(rid)) == 0
    assert handle.remote(6).result(timeout_s=30) == 6
