"""A replica's request handling without Redis: every kind of request through
``Requests.run``, on a real event loop thread, with an in-memory transport."""

from __future__ import annotations

import asyncio
import concurrent.futures
import pickle
import threading
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from starlette.responses import StreamingResponse

from actors.exceptions import RequestCancelledError
from actors.handle import _chained_value
from actors.runtime import streaming
from actors.runtime.cancellation import Cancellations
from actors.runtime.requests import Requests
from broker import codec, streams
from broker.queue import STREAMED
from tests.cluster import poll

TIMEOUT_S = 10


class FakeSink:
    """One response stream in memory: the entries its writer sent, in order."""

    def __init__(self, req_id: str, inbox: str) -> None:
        self.req_id, self.inbox = req_id, inbox
        self.entries: list[tuple[bytes, bytes]] = []
        self.reader_left = threading.Event()  # a test sets it: the reader stopped early
        self.dropped = threading.Event()

    async def write(self, entries: list[tuple[bytes, bytes]]) -> bool:
        self.entries.extend(entries)
        return self.reader_left.is_set()

    async def stop_requested(self) -> bool:
        return self.reader_left.is_set()

    async def drop(self) -> None:
        self.dropped.set()

    def items(self) -> list[Any]:
        return [item for kind, payload in self.entries if kind == streams.ITEMS
                for item in streams.decode_items(payload)]

    def kinds(self) -> list[bytes]:
        return [kind for kind, _ in self.entries]


class FakeTransport:
    """Streams in memory; chained arguments read from ``results`` (upstream outcomes)."""

    def __init__(self) -> None:
        self.sinks: dict[str, FakeSink] = {}
        self.results: dict[str, bytes] = {}

    def stream(self, req_id: str, inbox: str) -> FakeSink:
        sink = self.sinks[req_id] = FakeSink(req_id, inbox)
        return sink

    def calls(self) -> FakeTransport:
        return self

    def watch(self, req_id: str) -> concurrent.futures.Future[bytes]:
        future: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        future.set_result(self.results[req_id])
        return future


class Ref:
    """An argument chained to another request's result, as a passed-on response pickles."""

    def __init__(self, req_id: str) -> None:
        self.req_id = req_id

    def __reduce__(self) -> Any:
        return _chained_value, (self.req_id,)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="replica-loop", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result(TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT_S)
        loop.close()


@pytest.fixture
def transport() -> FakeTransport:
    return FakeTransport()


@pytest.fixture
def cancels() -> Cancellations:
    return Cancellations()


@pytest.fixture
def make(loop: asyncio.AbstractEventLoop, transport: FakeTransport, cancels: Cancellations) -> Any:
    def make(target: Any, *, is_function: bool = False) -> Requests:
        return Requests(target=target, is_function=is_function, deployment="Dep", transport=transport,
                        loop=loop, cancels=cancels)
    return make


def message(method: str = "__call__", *args: Any, refs: tuple[str, ...] = (), stream: bool = False,
            http: bool = False, payload: bytes | None = None) -> dramatiq.Message[Any]:
    raw = codec.encode_request(req_id=codec.new_request_id(), method=method, refs=refs, stream=stream,
                               http=http, reply_to="" if stream else "inbox:caller",
                               payload=codec.encode_args(args, {}) if payload is None else payload)
    return dramatiq.Message(**codec.decode_request(raw))


def value_of(outcome: concurrent.futures.Future[bytes]) -> Any:
    ok, value = codec.decode_outcome(outcome.result(TIMEOUT_S))
    assert ok, value
    return value


def failure_of(outcome: concurrent.futures.Future[bytes]) -> codec.RemoteFailure:
    ok, failure = codec.decode_outcome(outcome.result(TIMEOUT_S))
    assert not ok, failure
    return failure


# Unary ------------------------------------------------------------------------------------

def test_a_sync_method_runs_on_the_worker_thread_and_its_outcome_is_ready_at_once(make) -> None:
    class Adder:
        def add(self, a: int, b: int) -> tuple[int, str]:
            return a + b, threading.current_thread().name

    outcome = make(Adder()).run(message("add", 1, 2))
    assert outcome.done()  # the ack writes it straight away: nothing is deferred
    assert value_of(outcome) == (3, threading.current_thread().name)


def test_an_async_method_runs_on_the_loop_and_the_worker_thread_is_free_at_once(make) -> None:
    release = threading.Event()

    class Slow:
        async def add(self, a: int, b: int) -> tuple[int, str]:
            await asyncio.get_running_loop().run_in_executor(None, release.wait, TIMEOUT_S)
            return a + b, threading.current_thread().name

    outcome = make(Slow()).run(message("add", 1, 2))
    assert not outcome.done()  # run returned while the method still waits
    release.set()
    assert value_of(outcome) == (3, "replica-loop")


def test_a_function_deployment_is_called_as_the_handle_itself(make) -> None:
    def double(x: int) -> int:
        return 2 * x

    requests = make(double, is_function=True)
    assert value_of(requests.run(message("__call__", 21))) == 42
    assert "has no method 'other'" in failure_of(requests.run(message("other", 21))).message


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_what_the_user_code_raises_is_the_outcome(make, kind: str) -> None:
    class Failing:
        def sync(self) -> None:
            raise ValueError("boom")

        async def async_(self) -> None:
            raise ValueError("boom")

    failure = failure_of(make(Failing()).run(message("sync" if kind == "sync" else "async_")))
    assert failure.type_name.endswith("ValueError") and failure.message == "boom"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_return_value_that_cannot_be_pickled_becomes_a_type_error(make, kind: str) -> None:
    class Unpicklable:
        def sync(self) -> Any:
            return threading.Lock()

        async def async_(self) -> Any:
            return threading.Lock()

    failure = failure_of(make(Unpicklable()).run(message("sync" if kind == "sync" else "async_")))
    assert failure.type_name.endswith("TypeError")
    assert "Deployment 'Dep' returned a value that cannot be pickled (lock)" in failure.message


def test_a_request_cancelled_before_it_started_never_runs(make, cancels: Cancellations) -> None:
    ran: list[int] = []

    class Target:
        def m(self) -> None:
            ran.append(1)

    taken = message("m")
    cancels.heard(taken.message_id)
    failure = failure_of(make(Target()).run(taken))
    assert failure.type_name.endswith("RequestCancelledError") and "cancelled before it started" in failure.message
    assert isinstance(failure.exception, RequestCancelledError)
    assert ran == []


def test_a_running_async_request_cancelled_by_its_caller_stops(make, cancels: Cancellations) -> None:
    started, stopped = threading.Event(), threading.Event()

    class Target:
        async def m(self) -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            finally:
                stopped.set()

    taken = message("m")
    outcome = make(Target()).run(taken)
    assert started.wait(TIMEOUT_S)
    cancels.heard(taken.message_id)
    failure = failure_of(outcome)
    assert failure.type_name.endswith("RequestCancelledError") and "the caller cancelled" in failure.message
    assert stopped.wait(TIMEOUT_S)  # the outcome may be written before the loop has stopped the coroutine


def test_chained_arguments_are_read_through_the_transport(make, transport: FakeTransport) -> None:
    class Target:
        def inc(self, x: int) -> int:
            return x + 1

    transport.results["up"] = codec.encode_value(41)
    chained = codec.encode_args((Ref("up"),), {})
    assert value_of(make(Target()).run(message("inc", refs=("up",), payload=chained))) == 42
    # An upstream call that failed fails the downstream one with its error
    transport.results["up"] = codec.encode_error(KeyError("upstream"))
    assert failure_of(make(Target()).run(message("inc", refs=("up",), payload=chained))).type_name.endswith("KeyError")


# Streamed ---------------------------------------------------------------------------------

class Counter:
    def __init__(self) -> None:
        self.closed = threading.Event()

    def sync(self, n: int) -> Iterator[int]:
        try:
            yield from range(n)
        finally:
            self.closed.set()

    async def async_(self, n: int) -> Any:
        try:
            for i in range(n):
                yield i
        finally:
            self.closed.set()

    def failing(self) -> Iterator[int]:
        yield 1
        raise ValueError("mid-stream")


@pytest.mark.parametrize("method", ["sync", "async_"])
def test_a_generator_streams_its_items_then_the_end(make, transport: FakeTransport, method: str) -> None:
    counter = Counter()
    taken = message(method, 50, stream=True)
    outcome = make(counter).run(taken)
    assert outcome.result(TIMEOUT_S) == STREAMED  # only acknowledged: the items went to the stream
    sink = transport.sinks[taken.message_id]
    assert sink.items() == list(range(50))
    assert sink.kinds()[-1] == streams.END and sink.kinds().count(streams.END) == 1
    assert counter.closed.is_set()


def test_a_generator_that_raises_ends_its_stream_with_the_error(make, transport: FakeTransport) -> None:
    taken = message("failing", stream=True)
    assert make(Counter()).run(taken).result(TIMEOUT_S) == STREAMED
    sink = transport.sinks[taken.message_id]
    assert sink.items() == [1]
    (kind, payload) = sink.entries[-1]
    ok, failure = codec.decode_outcome(payload)
    assert kind == streams.ERROR and not ok and failure.message == "mid-stream"


def test_a_call_with_stream_true_that_returns_no_generator_ends_its_stream_with_a_type_error(
        make, transport: FakeTransport) -> None:
    class Plain:
        def m(self) -> int:
            return 1

    taken = message("m", stream=True)
    assert make(Plain()).run(taken).result(TIMEOUT_S) == STREAMED
    kind, payload = transport.sinks[taken.message_id].entries[-1]
    ok, failure = codec.decode_outcome(payload)
    assert kind == streams.ERROR and failure.type_name.endswith("TypeError")
    assert "did not return a generator" in failure.message


def test_a_sync_generator_stops_when_its_reader_leaves(make, transport: FakeTransport) -> None:
    reached: list[int] = []
    closed = threading.Event()

    class Endless:
        def m(self) -> Iterator[int]:
            sink = transport.sinks[taken.message_id]
            sink.reader_left.set()  # the reader is gone before the first write
            try:
                yield 0
                assert sink.dropped.wait(TIMEOUT_S)  # the writer learnt it at its first write
                for i in range(1, 1000):
                    reached.append(i)
                    yield i
            finally:
                closed.set()

    taken = message("m", stream=True)
    assert make(Endless()).run(taken).result(TIMEOUT_S) == STREAMED
    sink = transport.sinks[taken.message_id]
    # Closed as soon as the worker thread saw it: before the next item, or right after it
    assert reached in ([], [1]) and closed.is_set()
    assert sink.items() == [0] and streams.END not in sink.kinds()


def test_an_async_generator_that_yields_nothing_is_cancelled_when_its_reader_leaves(
        make, transport: FakeTransport, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "CANCEL_CHECK_S", 0.01)
    cancelled = threading.Event()

    class Quiet:
        async def m(self) -> Any:
            yield 0
            try:
                await asyncio.Event().wait()  # yields nothing more, ever
            except asyncio.CancelledError:
                cancelled.set()
                raise

    taken = message("m", stream=True)
    outcome = make(Quiet()).run(taken)
    sink = poll(lambda: transport.sinks.get(taken.message_id), timeout_s=TIMEOUT_S, what="the stream")
    poll(lambda: sink.items() == [0], timeout_s=TIMEOUT_S, what="the first item")
    sink.reader_left.set()
    assert outcome.result(TIMEOUT_S) == STREAMED
    assert cancelled.is_set() and sink.dropped.is_set()


# HTTP -------------------------------------------------------------------------------------

def http_message(path: str = "/hello", body: bytes = b"") -> dramatiq.Message[Any]:
    snapshot = {"method": "POST", "path": path, "root_path": "", "query_string": b"a=1",
                "headers": [(b"content-type", b"text/plain")], "body": body}
    return message(http=True, payload=pickle.dumps(((snapshot,), {})))


def test_an_http_request_runs_through_call_and_its_response_is_the_outcome(make) -> None:
    class Ingress:
        async def __call__(self, request: Any) -> dict[str, Any]:
            return {"path": request.url.path, "a": request.query_params["a"], "body": (await request.body()).decode()}

    kind, status, headers, body = value_of(make(Ingress()).run(http_message(body=b"hi")))
    assert (kind, status) == ("http", 200)
    assert (b"content-type", b"application/json") in headers
    assert body == b'{"path":"/hello","a":"1","body":"hi"}'


def test_a_sync_http_function_runs_off_the_loop(make) -> None:
    def where(request: Any) -> str:
        return threading.current_thread().name

    kind, status, _, body = value_of(make(where, is_function=True).run(http_message()))
    assert (kind, status) == ("http", 200) and body and body != b"replica-loop"


def test_a_streamed_http_response_is_announced_then_sent_through_the_stream(make, transport: FakeTransport) -> None:
    class Ingress:
        def __call__(self) -> StreamingResponse:
            async def chunks() -> Any:
                for part in (b"a", b"b", b"c"):
                    yield part
            return StreamingResponse(chunks(), media_type="text/plain")

    taken = http_message()
    assert make(Ingress()).run(taken).result(TIMEOUT_S) == STREAMED
    sink = transport.sinks[taken.message_id]
    assert sink.inbox == "inbox:caller"  # the head goes to the caller's inbox first
    assert sink.kinds()[0] == streams.ANNOUNCE and sink.kinds()[-1] == streams.END
    head = codec.decode_outcome(sink.entries[0][1])
    assert head[0] and head[1][:2] == ("http-stream", 200)
    assert b"".join(sink.items()) == b"abc"
