"""The handle API against real replicas: calls, methods, chaining, errors, timeouts."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from actors import serve
from actors.exceptions import DeploymentUnavailableError, RequestCancelledError
from actors.handle import DeploymentHandle, DeploymentResponse


class MyError(Exception):
    """A user exception class defined in the deployed module."""

    def __init__(self, code: int) -> None:
        super().__init__(f"code {code}")
        self.code = code


@serve.deployment
class Echo:
    def __call__(self, *args, **kwargs):
        return {"args": args, "kwargs": kwargs}

    def pid(self) -> int:
        return os.getpid()

    def fail(self, code: int) -> None:
        raise MyError(code)

    def value_error(self) -> None:
        raise ValueError("bad value")

    def sleep(self, seconds: float) -> str:
        time.sleep(seconds)
        return "slept"


@serve.deployment
def double(x: int) -> int:
    return 2 * x


@serve.deployment(name="Tripler", max_ongoing_requests=7)
class Times:
    def __init__(self, k: int) -> None:
        self.k = k

    async def __call__(self, x: int) -> int:
        await asyncio.sleep(0)
        return self.k * x


@serve.deployment
class Holder:
    """Receives bound deployments nested in containers."""

    def __init__(self, handles: list, table: dict, pair: tuple) -> None:
        self.handles, self.table, self.pair = handles, table, pair

    async def __call__(self, x: int) -> list:
        return [await self.handles[0].remote(x), await self.table["t"].remote(x), await self.pair[1].remote(x)]

    def kinds(self) -> list:
        return [type(self.handles[0]).__name__, type(self.table["t"]).__name__, type(self.pair[1]).__name__]


@serve.deployment
class Combiner:
    """Takes values that arrive from chained responses."""

    def __call__(self, a, b=None, items=None, table=None):
        return {"a": a, "b": b, "items": items, "table": table}


@pytest.fixture(scope="module")
def echo(serve_instance) -> DeploymentHandle:
    return serve.run(Echo.bind(), name="echo", route_prefix="/echo")


def test_call_and_method_and_options(echo: DeploymentHandle) -> None:
    assert echo.remote(1, k="v").result() == {"args": (1,), "kwargs": {"k": "v"}}
    assert isinstance(echo.pid.remote().result(), int)
    assert echo.options(method_name="pid").remote().result() == echo.pid.remote().result()


def test_function_deployment(serve_instance) -> None:
    handle = serve.run(double.bind(), name="fn", route_prefix="/fn")
    assert handle.remote(21).result() == 42


def test_options_name_and_async_method(serve_instance) -> None:
    handle = serve.run(Times.options(num_replicas=1).bind(3), name="times", route_prefix="/times")
    assert handle.deployment_name == "Tripler"
    assert handle.remote(5).result() == 15


def test_bound_deployments_nested_in_containers_arrive_as_handles(serve_instance) -> None:
    app = Holder.bind([double.bind()], {"t": Times.bind(3)}, ("x", Times.options(name="Five").bind(5)))
    handle = serve.run(app, name="nested", route_prefix="/nested")
    assert handle.kinds.remote().result() == ["DeploymentHandle"] * 3
    assert handle.remote(2).result() == [4, 6, 10]


def test_chained_responses_as_args_kwargs_and_nested(serve_instance) -> None:
    handle = serve.run(Combiner.bind(), name="combine", route_prefix="/combine")
    d = serve.run(double.bind(), name="fn2", route_prefix="/fn2")
    r1, r2, r3, r4 = d.remote(1), d.remote(2), d.remote(3), d.remote(4)
    out = handle.remote(r1, b=r2, items=[r3, 0], table={"k": r4}).result()
    assert out == {"a": 2, "b": 4, "items": [6, 0], "table": {"k": 8}}
    # The responses still give their own values to the caller afterwards.
    assert r1.result() == 2 and r4.result() == 8


def test_chained_call_does_not_wait_for_the_caller(serve_instance, echo) -> None:
    # Given a slow upstream call
    slow = echo.sleep.remote(0.5)
    # When its response is passed downstream and only the downstream one is awaited
    combine = serve.get_app_handle("combine") if "combine" in serve.status().applications else \
        serve.run(Combiner.bind(), name="combine", route_prefix="/combine")
    start = time.monotonic()
    out = combine.remote(slow).result(timeout_s=10)
    # Then the downstream replica got the upstream value itself
    assert out["a"] == "slept"
    assert time.monotonic() - start < 5


def test_upstream_error_fails_the_chained_call(serve_instance, echo) -> None:
    combine = serve.run(Combiner.bind(), name="combine", route_prefix="/combine")
    with pytest.raises(MyError):
        combine.remote(echo.fail.remote(7)).result(timeout_s=10)


def test_user_exception_keeps_its_class_and_remote_traceback(echo: DeploymentHandle) -> None:
    with pytest.raises(MyError) as info:
        echo.fail.remote(3).result()
    assert info.value.code == 3
    assert "code 3" in str(info.value)
    assert "Remote traceback" in str(info.value) and "raise MyError(code)" in str(info.value)
    with pytest.raises(ValueError, match="bad value"):
        echo.value_error.remote().result()


def test_result_timeout_raises_timeout_error(echo: DeploymentHandle) -> None:
    response = echo.sleep.remote(1.0)
    with pytest.raises(TimeoutError):
        response.result(timeout_s=0.05)
    assert response.result(timeout_s=10) == "slept"


def test_await_from_asyncio(echo: DeploymentHandle) -> None:
    async def main():
        responses = [echo.remote(i) for i in range(50)]
        return await asyncio.gather(*responses)

    results = asyncio.run(main())
    assert [r["args"][0] for r in results] == list(range(50))


def test_result_inside_event_loop_is_refused(echo: DeploymentHandle) -> None:
    async def main():
        echo.remote(1).result()

    with pytest.raises(RuntimeError, match="await response"):
        asyncio.run(main())


def test_response_cannot_be_pickled_outside_a_call(echo: DeploymentHandle) -> None:
    import pickle

    from actors.exceptions import ServeException

    with pytest.raises(ServeException, match="passed as an argument"):
        pickle.dumps(echo.remote(1))


def test_get_handles_and_unknown_names(serve_instance, echo) -> None:
    assert serve.get_app_handle("echo").remote(1).result()["args"] == (1,)
    assert serve.get_deployment_handle("Echo", app_name="echo").pid.remote().result() > 0
    with pytest.raises(DeploymentUnavailableError):
        serve.get_app_handle("no-such-app")
    with pytest.raises(DeploymentUnavailableError):
        serve.get_deployment_handle("Nope", app_name="echo")


def test_cancel_a_queued_request_never_runs_it(serve_instance) -> None:
    @serve.deployment(max_ongoing_requests=1)
    class Single:
        def __init__(self):
            self.calls = []

        def __call__(self, tag):
            self.calls.append(tag)
            time.sleep(0.3) if tag == "busy" else None
            return tag

        def seen(self):
            return list(self.calls)

    handle = serve.run(Single.bind(), name="single", route_prefix="/single")
    busy = handle.remote("busy")
    queued = handle.remote("victim")
    queued.cancel()
    with pytest.raises(RequestCancelledError):
        queued.result(timeout_s=5)
    assert busy.result(timeout_s=10) == "busy"
    assert "victim" not in handle.seen.remote().result(timeout_s=10)


def test_many_calls_in_flight_share_few_connections(serve_instance, echo) -> None:
    # Given one process with thousands of calls in flight
    responses = [echo.remote(i) for i in range(2000)]
    assert [r.result(timeout_s=60)["args"][0] for r in responses] == list(range(2000))
    # Then its calls used a handful of Redis connections, not one per call
    mine = [c for c in serve_instance.redis.client_list() if c["name"] == f"mqserve-caller-{os.getpid()}"]
    assert 1 <= len(mine) <= 4, f"{len(mine)} connections to Redis"


def test_handle_is_picklable_and_works_in_another_process(echo: DeploymentHandle) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        assert pool.apply(_call_in_child, (echo,)) == {"args": ("child",), "kwargs": {}}


def _call_in_child(handle: DeploymentHandle):
    return handle.remote("child").result(timeout_s=30)


def test_concurrent_sync_threads(echo: DeploymentHandle) -> None:
    results: list = []

    def worker(i: int) -> None:
        results.append(echo.remote(i).result(timeout_s=30)["args"][0])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(20))


def test_response_type(echo: DeploymentHandle) -> None:
    assert isinstance(echo.remote(), DeploymentResponse)


def test_another_process_gets_app_handles_through_redis(serve_instance, echo, redis_url, namespace) -> None:
    from tests.conftest import run_python

    # Given an app deployed by this process, another process that only knows the Redis URL
    code = ("from actors import serve\n"
            "print(serve.get_app_handle('echo').remote('far').result(timeout_s=30)['args'][0])\n"
            "print(serve.get_deployment_handle('Echo', 'echo').pid.remote().result(timeout_s=30) > 0)\n")
    proc = run_python(code, env={"MQSERVE_REDIS_URL": redis_url, "MQSERVE_NAMESPACE": namespace})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["far", "True"]


@serve.deployment
class Patient:
    def __init__(self) -> None:
        self.log: list[str] = []

    async def wait(self, seconds: float) -> str:
        self.log.append("started")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.log.append("cancelled")
            raise
        self.log.append("finished")
        return "done"

    def events(self) -> list:
        return list(self.log)


def test_cancelling_a_running_async_call_raises_cancelled_error_inside_it(serve_instance) -> None:
    handle = serve.run(Patient.bind(), name="patient", route_prefix="/patient")
    response = handle.wait.remote(30)
    deadline = time.monotonic() + 10
    while handle.events.remote().result() != ["started"]:
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.02)
    response.cancel()
    with pytest.raises(RequestCancelledError):
        response.result(timeout_s=5)
    while handle.events.remote().result() != ["started", "cancelled"]:
        assert time.monotonic() < deadline, "the replica's coroutine was not cancelled"
        time.sleep(0.02)


@serve.deployment(max_ongoing_requests=1, max_queued_requests=2)
class Narrow:
    def __init__(self) -> None:
        self.seen: list[int] = []

    async def __call__(self, i: int) -> int:
        self.seen.append(i)
        await asyncio.sleep(0.3 if i == 0 else 0)
        return i

    def ran(self) -> list:
        return list(self.seen)


def test_backpressure_rejects_at_once_and_never_runs_the_rejected(serve_instance) -> None:
    from actors.exceptions import BackPressureError

    handle = serve.run(Narrow.bind(), name="narrow", route_prefix="/narrow")
    busy = handle.remote(0)
    deadline = time.monotonic() + 10
    while serve.status().applications["narrow"].deployments["Narrow"].ongoing_requests < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # Given one request running and two waiting (max_queued_requests=2)
    waiting = [handle.remote(1), handle.remote(2)]
    # When another arrives, it is refused at once
    start = time.monotonic()
    with pytest.raises(BackPressureError):
        handle.remote(3).result(timeout_s=5)
    assert time.monotonic() - start < 0.25
    # And the others are served, while the refused one never ran
    assert busy.result(timeout_s=10) == 0 and [r.result(timeout_s=10) for r in waiting] == [1, 2]
    assert 3 not in handle.ran.remote().result()


def test_each_result_ttl_gets_its_own_client(redis_url: str, namespace: str) -> None:
    """Handles with different result TTLs in one process do not share the first one's."""
    from actors.runtime.caller import get_client
    from broker.keys import Keys

    short = get_client(redis_url, Keys(namespace), result_ttl_ms=1_000)
    long = get_client(redis_url, Keys(namespace), result_ttl_ms=600_000)
    try:
        assert (short.result_ttl_ms, long.result_ttl_ms) == (1_000, 600_000)
        assert get_client(redis_url, Keys(namespace), result_ttl_ms=1_000) is short
    finally:
        short.close()
        long.close()


def test_dramatiq_enqueue_cannot_bypass_the_enqueue_script(redis_url: str, namespace: str) -> None:
    """Only enqueue.lua queues requests (it checks the deployment exists, backpressure and
    cancellation): the broker's Dramatiq ``enqueue`` is refused, nothing is queued."""
    import dramatiq

    from broker import codec
    from broker.keys import Keys
    from broker.queue import ServeBroker

    keys = Keys(namespace)
    queue = keys.queue("noapp", "nodep")
    broker = ServeBroker(redis_url, keys, queue_key=queue, processing_key=keys.processing("r"), result_ttl_ms=1000)
    try:
        message = dramatiq.Message(queue_name=codec.REQUEST_QUEUE, actor_name=codec.REQUEST_ACTOR,
                                   args=("__call__", b"", ()), kwargs={}, options={})
        with pytest.raises(NotImplementedError):
            broker.enqueue(message)
        assert broker.client.llen(queue) == 0
    finally:
        broker.close()
