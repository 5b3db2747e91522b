"""Background requests (issue 14 §1): ``handle.options(background=True)``,
``serve.get_response``, HTTP ``Prefer: respond-async`` and ``/-/requests/{id}``, status
records, the failed index and ``mqserve requests``; against real processes in cluster mode."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest
import redis
from starlette.responses import Response, StreamingResponse

from actors import serve
from actors.exceptions import ReplicaDiedError, RequestCancelledError, RequestNotFoundError
from tests.cluster import poll, settle_keys
from tests.conftest import ROOT, run_python

HOLD_S = 60.0


@serve.deployment(max_ongoing_requests=1)
class Jobs:
    """Reports to Redis what it runs (so a test can count), and holds a slot until told."""

    def __init__(self, url: str, prefix: str) -> None:
        self.redis = redis.Redis.from_url(url)
        self.prefix = prefix

    def hold(self, key: str) -> str:
        self.redis.incr(f"{self.prefix}:started:{key}")
        deadline = time.monotonic() + HOLD_S
        while not self.redis.exists(f"{self.prefix}:release:{key}") and time.monotonic() < deadline:
            time.sleep(0.01)
        return key

    def count(self, token: str) -> str:
        self.redis.incr(f"{self.prefix}:ran:{token}")
        return token

    def echo(self, value: object) -> object:
        return value

    def fail(self, text: str) -> None:
        raise ValueError(text)

    async def nap(self, token: str) -> str:
        self.redis.incr(f"{self.prefix}:started:{token}")
        try:
            await asyncio.sleep(HOLD_S)
        except asyncio.CancelledError:
            self.redis.incr(f"{self.prefix}:cancelled:{token}")
            raise
        return token


@pytest.fixture(scope="module")
def jobs(serve_instance, redis_url: str):
    prefix = f"bg-{uuid.uuid4().hex[:6]}"
    handle = serve.run(Jobs.bind(redis_url, prefix), name="bg", route_prefix=None)
    r = redis.Redis.from_url(redis_url)
    yield handle, prefix, r
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        r.delete(key)


def _started(r: redis.Redis, prefix: str, key: str) -> None:
    poll(lambda: r.exists(f"{prefix}:started:{key}"), what=f"'{key}' to start")


def test_a_background_request_outlives_its_caller(jobs, redis_url: str, namespace: str) -> None:
    """Sent by a process that exits at once, queued behind a held slot for over 5 s (an
    ordinary call sent with it is dropped as abandoned, proving the setup), it runs, and
    any process reads it by id, its status going QUEUED -> RUNNING -> SUCCEEDED."""
    handle, prefix, r = jobs
    holder = handle.hold.remote("slot")
    _started(r, prefix, "slot")
    sent = run_python(
        "from actors import serve\n"
        "h = serve.get_deployment_handle('Jobs', 'bg')\n"
        "bg = h.options(background=True).hold.remote('bg')\n"
        "h.count.remote('control')\n"
        "print(bg.request_id)\n",
        env={"MQSERVE_REDIS_URL": redis_url, "MQSERVE_NAMESPACE": namespace})
    assert sent.returncode == 0, sent.stderr
    request_id = sent.stdout.strip().splitlines()[-1]
    response = serve.get_response(request_id)
    assert response.request_id == request_id
    assert response.status() == "QUEUED"
    time.sleep(5.5)  # not waiting for a state: the request must be older than the abandonment check
    assert response.status() == "QUEUED"
    r.set(f"{prefix}:release:slot", 1)
    assert holder.result(timeout_s=30) == "slot"
    poll(lambda: response.status() == "RUNNING", what="the background request to run")
    r.set(f"{prefix}:release:bg", 1)
    assert response.result(timeout_s=30) == "bg"
    assert response.status() == "SUCCEEDED"
    # The ordinary call of the dead caller was dropped unrun once taken.
    assert handle.count.remote("after").result(timeout_s=30) == "after"
    assert not r.exists(f"{prefix}:ran:control")
    record = serve_instance_record(r, namespace, request_id)
    assert record[b"app"] == b"bg" and record[b"method"] == b"hold" and record[b"attempts"] == b"1"
    assert int(record[b"created"]) <= int(record[b"started"]) <= int(record[b"ended"])


def serve_instance_record(r: redis.Redis, namespace: str, request_id: str) -> dict[bytes, bytes]:
    return r.hgetall(f"{namespace}:req:{request_id}")


def test_results_are_kept_however_often_they_are_read(jobs, namespace: str) -> None:
    handle, prefix, r = jobs
    response = handle.options(background=True).echo.remote({"n": 1})
    assert response.result(timeout_s=30) == {"n": 1}
    for _ in range(3):
        assert serve.get_response(response.request_id).result(timeout_s=30) == {"n": 1}
    assert asyncio.run(_awaited(response.request_id)) == {"n": 1}
    # Passed to another call, by reference (a fresh response) and inline (one read already).
    assert handle.echo.remote(serve.get_response(response.request_id)).result(timeout_s=30) == {"n": 1}
    assert handle.echo.remote(response).result(timeout_s=30) == {"n": 1}
    pending = handle.options(background=True).hold.remote("chained")
    chained = handle.options(background=True).echo.remote(pending)  # by reference: not answered yet
    r.set(f"{prefix}:release:chained", 1)
    assert chained.result(timeout_s=30) == "chained" and pending.result(timeout_s=30) == "chained"
    for req_id in (response.request_id, pending.request_id, chained.request_id):
        ttl = r.pttl(f"{namespace}:res:{req_id}")
        assert ttl > 86_000_000, f"the result of {req_id} lost its TTL ({ttl} ms) after its reads"
        assert serve.get_response(req_id).status() == "SUCCEEDED"


async def _awaited(request_id: str) -> object:
    return await serve.get_response(request_id)


def test_errors_are_raised_and_recorded(jobs, namespace: str) -> None:
    handle, _, r = jobs
    response = handle.options(background=True).fail.remote("boom\nsecond line")
    with pytest.raises(ValueError, match="boom"):
        response.result(timeout_s=30)
    with pytest.raises(ValueError, match="boom"):
        serve.get_response(response.request_id).result(timeout_s=30)
    assert response.status() == "FAILED"
    record = serve_instance_record(r, namespace, response.request_id)
    assert record[b"error_type"] == b"builtins.ValueError" and record[b"error"] == b"boom"


def test_unknown_ids_raise_a_key_error() -> None:
    for request_id in (uuid.uuid4().hex, "nope"):
        with pytest.raises(RequestNotFoundError, match="No background request") as caught:
            serve.get_response(request_id)
        assert isinstance(caught.value, KeyError)


def test_cancel_a_queued_one_and_a_running_one(jobs) -> None:
    handle, prefix, r = jobs
    holder = handle.hold.remote("cancel-slot")
    _started(r, prefix, "cancel-slot")
    queued = handle.options(background=True).count.remote("cancelled-queued")
    assert queued.status() == "QUEUED"
    serve.get_response(queued.request_id).cancel()  # from a response got by id
    poll(lambda: queued.status() == "CANCELLED", what="the queued request to be cancelled")
    with pytest.raises(RequestCancelledError):
        queued.result(timeout_s=30)
    r.set(f"{prefix}:release:cancel-slot", 1)
    assert holder.result(timeout_s=30) == "cancel-slot"
    assert handle.count.remote("behind").result(timeout_s=30) == "behind"  # the queue has moved past it
    assert not r.exists(f"{prefix}:ran:cancelled-queued")

    running = handle.options(background=True).nap.remote("cancelled-running")
    _started(r, prefix, "cancelled-running")
    poll(lambda: running.status() == "RUNNING", what="the request to run")
    running.cancel()
    poll(lambda: running.status() == "CANCELLED", what="the running request to be cancelled")
    assert r.get(f"{prefix}:cancelled:cancelled-running") == b"1"
    with pytest.raises(RequestCancelledError):
        serve.get_response(running.request_id).result(timeout_s=30)


def test_get_response_right_after_remote_races_nothing(jobs) -> None:
    handle, _, _ = jobs
    for i in range(20):
        response = handle.options(background=True).echo.remote(i)
        assert serve.get_response(response.request_id).result(timeout_s=30) == i
        assert serve.get_response(response.request_id).status() == "SUCCEEDED"


def test_ordinary_calls_leave_no_new_keys_and_background_ones_exactly_two(jobs, cluster, namespace: str) -> None:
    handle, _, _ = jobs
    assert handle.echo.remote(0).result(timeout_s=30) == 0
    idle = cluster.namespace_keys()
    assert [handle.echo.remote(i).result(timeout_s=30) for i in range(50)] == list(range(50))
    assert [handle.echo.remote(handle.echo.remote(i)).result(timeout_s=30) for i in range(10)] == list(range(10))
    settle_keys(cluster, idle)
    response = handle.options(background=True).echo.remote("kept")
    assert response.result(timeout_s=30) == "kept"
    settle_keys(cluster, idle | {f"{namespace}:req:{response.request_id}".encode(),
                                 f"{namespace}:res:{response.request_id}".encode()})
    assert {f"{namespace}:req:{response.request_id}".encode(),
            f"{namespace}:res:{response.request_id}".encode()} <= cluster.namespace_keys()


# HTTP ----------------------------------------------------------------------------------------

@serve.deployment(max_ongoing_requests=4)
class Web:
    def __init__(self, url: str, prefix: str) -> None:
        self.redis = redis.Redis.from_url(url)
        self.prefix = prefix

    async def __call__(self, request):
        kind = request.url.path.rsplit("/", 1)[-1]
        token = request.query_params.get("token", "")
        if kind == "made":
            while not self.redis.exists(f"{self.prefix}:release:{token}"):
                await asyncio.sleep(0.01)
            return Response(b"made it", status_code=201, headers={"x-made": "yes"}, media_type="text/plain")
        if kind == "json":
            return {"echo": (await request.body()).decode(), "method": request.method}
        if kind == "stream":
            async def pieces():
                for i in range(3):
                    yield f"{i};"
            return StreamingResponse(pieces(), media_type="text/plain")
        if kind == "nap":
            self.redis.incr(f"{self.prefix}:started:{token}")
            try:
                await asyncio.sleep(HOLD_S)
            except asyncio.CancelledError:
                self.redis.incr(f"{self.prefix}:cancelled:{token}")
                raise
        if kind == "fail":
            raise ValueError("web boom")
        return "plain"


@pytest.fixture(scope="module")
def web(serve_instance, redis_url: str):
    prefix = f"web-{uuid.uuid4().hex[:6]}"
    serve.run(Web.bind(redis_url, prefix), name="web", route_prefix="/web")
    r = redis.Redis.from_url(redis_url)
    yield f"http://127.0.0.1:{os.environ['MQSERVE_HTTP_PORT']}", prefix, r
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        r.delete(key)


ASYNC = {"Prefer": "respond-async"}


def _submitted(base: str, path: str, **kwargs) -> str:
    answer = httpx.request(kwargs.pop("method", "GET"), f"{base}{path}", headers=ASYNC, timeout=30, **kwargs)
    assert answer.status_code == 202, answer.text
    request_id = answer.json()["request_id"]
    assert answer.headers["location"] == f"/-/requests/{request_id}"
    assert answer.headers["preference-applied"] == "respond-async"
    return request_id


def _final(base: str, request_id: str) -> httpx.Response:
    return poll(lambda: (a := httpx.get(f"{base}/-/requests/{request_id}", timeout=30)).status_code != 202 and a,
                what="the request to end")


def test_respond_async_with_a_starlette_response(web) -> None:
    base, prefix, r = web
    request_id = _submitted(base, "/web/made?token=t1")
    running = httpx.get(f"{base}/-/requests/{request_id}", timeout=30)
    assert running.status_code == 202 and running.json()["status"] in ("QUEUED", "RUNNING")
    poll(lambda: httpx.get(f"{base}/-/requests/{request_id}", timeout=30).json().get("status") == "RUNNING",
         what="the request to run")
    r.set(f"{prefix}:release:t1", 1)
    done = _final(base, request_id)
    for answer in (done, httpx.get(f"{base}/-/requests/{request_id}", timeout=30)):  # read again: still there
        assert answer.status_code == 201
        assert answer.headers["x-made"] == "yes" and answer.headers["content-type"].startswith("text/plain")
        assert answer.content == b"made it"
    # The same request id works in Python.
    assert serve.get_response(request_id).status() == "SUCCEEDED"


def test_respond_async_with_a_json_body_and_a_streamed_one(web) -> None:
    base, _, _ = web
    request_id = _submitted(base, "/web/json", method="POST", content=b"hello")
    done = _final(base, request_id)
    assert done.status_code == 200 and done.json() == {"echo": "hello", "method": "POST"}
    assert done.headers["content-type"] == "application/json"
    streamed = _final(base, _submitted(base, "/web/stream"))
    assert streamed.status_code == 200 and streamed.text == "0;1;2;"
    failed = _final(base, _submitted(base, "/web/fail"))
    assert failed.status_code == 500
    # Without the preference, the same route answers in the foreground.
    assert httpx.get(f"{base}/web/plain", timeout=30).text == "plain"


def test_monitor_of_unknown_ids_and_delete_cancels(web) -> None:
    base, prefix, r = web
    assert httpx.get(f"{base}/-/requests/{uuid.uuid4().hex}", timeout=30).status_code == 404
    assert httpx.delete(f"{base}/-/requests/{uuid.uuid4().hex}", timeout=30).status_code == 404
    request_id = _submitted(base, "/web/nap?token=n1")
    _started(r, prefix, "n1")
    cancelled = httpx.delete(f"{base}/-/requests/{request_id}", timeout=30)
    assert cancelled.status_code == 202 and cancelled.json() == {"status": "RUNNING", "cancel": "requested"}
    done = _final(base, request_id)
    assert done.status_code == 409 and done.json() == {"status": "CANCELLED"}
    assert r.get(f"{prefix}:cancelled:n1") == b"1"
    assert httpx.delete(f"{base}/-/requests/{request_id}", timeout=30).status_code == 409


def test_delete_withdraws_a_queued_http_request(web, jobs) -> None:
    """Four slots held by naps, the fifth request waits; DELETE withdraws it."""
    base, prefix, r = web
    held = [_submitted(base, f"/web/nap?token=h{i}") for i in range(4)]
    for i in range(4):
        _started(r, prefix, f"h{i}")
    waiting = _submitted(base, "/web/nap?token=never")
    assert httpx.get(f"{base}/-/requests/{waiting}", timeout=30).json() == {"status": "QUEUED"}
    assert httpx.delete(f"{base}/-/requests/{waiting}", timeout=30).json() == {"status": "CANCELLED"}
    assert _final(base, waiting).status_code == 409
    for request_id in held:
        assert httpx.delete(f"{base}/-/requests/{request_id}", timeout=30).status_code == 202
    for request_id in held:
        assert _final(base, request_id).status_code == 409
    assert not r.exists(f"{prefix}:started:never")


# Replica death, and mqserve requests ---------------------------------------------------------

@serve.deployment(max_ongoing_requests=1)
class Doomed:
    def __init__(self, url: str, prefix: str) -> None:
        self.redis = redis.Redis.from_url(url)
        self.prefix = prefix

    def __call__(self, token: str) -> str:
        self.redis.rpush(f"{self.prefix}:runs:{token}", os.getpid())
        time.sleep(HOLD_S)
        return token


def _running_pid(r: redis.Redis, runs_key: str, attempt: int, response) -> int:
    """The pid of the replica running ``attempt`` (0 for the first) of a request."""
    runs = poll(lambda: len(found := r.lrange(runs_key, 0, -1)) > attempt and found, what=f"attempt {attempt + 1}")
    poll(lambda: response.status() == "RUNNING", what="the request to run")
    return int(runs[attempt])


def _cli(*args: str, redis_url: str, namespace: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": ROOT, "MQSERVE_NAMESPACE": namespace}
    return subprocess.run([sys.executable, "-m", "actors.runtime.cli", *args, "--redis-url", redis_url],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_failed_after_replica_deaths_and_listed(serve_instance, redis_url: str, namespace: str) -> None:
    """Killed while running it: with max_request_retries=0 it is FAILED at once; with 1 it
    runs again on the replacement, which is killed too. Both are listed as failed."""
    prefix = f"doom-{uuid.uuid4().hex[:6]}"
    r = redis.Redis.from_url(redis_url)
    ids = {}
    for retries in (0, 1):
        app = f"doomed{retries}"
        handle = serve.run(Doomed.options(max_request_retries=retries).bind(redis_url, prefix), name=app,
                           route_prefix=None)
        response = handle.options(background=True).remote(app)
        ids[retries] = response.request_id
        for attempt in range(retries + 1):
            os.kill(_running_pid(r, f"{prefix}:runs:{app}", attempt, response), signal.SIGKILL)
        poll(lambda: response.status() == "FAILED", timeout_s=60, what="the request to fail")  # noqa: B023
        with pytest.raises(ReplicaDiedError):
            response.result(timeout_s=30)
        assert serve.get_response(response.request_id).status() == "FAILED"
        shown_by = _cli("requests", response.request_id, "--json", redis_url=redis_url, namespace=namespace)
        assert shown_by.returncode == 0, shown_by.stderr
        shown = json.loads(shown_by.stdout)
        assert shown["status"] == "FAILED" and shown["attempts"] == str(retries + 1)
        assert shown["error_type"].endswith("ReplicaDiedError") and "message" not in shown
        assert r.hget(f"{namespace}:counts:{app}:Doomed", "failed") == b"1"  # mqserve queue's FAILED column
        serve.delete(app)
    listed = _cli("requests", "--failed", "--json", redis_url=redis_url, namespace=namespace)
    assert listed.returncode == 0, listed.stderr
    assert set(ids.values()) <= {row["id"] for row in json.loads(listed.stdout)}
    text = _cli("requests", "--failed", redis_url=redis_url, namespace=namespace).stdout
    assert all(req_id in text for req_id in ids.values()) and "ReplicaDiedError" in text
    unknown = _cli("requests", uuid.uuid4().hex, redis_url=redis_url, namespace=namespace)
    assert unknown.returncode == 1 and "No background request" in unknown.stderr
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        r.delete(key)
