"""The caller's bookkeeping, without Redis: a CallClient on an in-memory transport.

Each test plays Redis's part by hand: it says what a script answers, pushes replies to
the caller's inbox as replicas would, and looks at the batches the caller sent. How an
event loop's calls go out is in ``test_sender.py``.
"""

from __future__ import annotations

import asyncio

import pytest

from actors.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RequestCancelledError,
    RequestLostError,
)
from actors.runtime import bridge
from actors.runtime.caller import DETACHED, CallClient
from broker import calls, codec, streams
from broker.keys import Keys
from tests.unit.caller_setup import KEYS, TTL_MS, submit
from tests.unit.fake_transport import FakeRedis


def reply(fake: FakeRedis, client: CallClient, req_id: str, outcome: bytes = b"") -> None:
    """What a replica pushes to the caller's inbox (just the id: the value went to the key)."""
    fake.lpush(client.inbox, req_id.encode() + outcome)


def listener_round(fake: FakeRedis, client: CallClient) -> None:
    """Wake the listener (as close() does) and wait until it has done one more round,
    which sends what was dropped meanwhile, and waits again."""
    fake.lpush(client.inbox, b"")
    fake.wait_for(lambda: not fake.lists.get(client.inbox) and client.inbox in fake.waiting,
                  what="a round of the listener")


def unlinked(fake: FakeRedis) -> set[str]:
    return {key for c in fake.sent("unlink") for key in c.args}


def test_a_reply_resolves_its_future_and_its_result_key_goes(fake: FakeRedis, client: CallClient) -> None:
    # Given a request sent
    req_id, fut = submit(client)
    (enqueue,) = fake.sent("enqueue")
    assert enqueue.keys[:2] == (KEYS.deployment("app", "Dep"), KEYS.queue("app", "Dep"))
    assert enqueue.args == (b"message", TTL_MS, "", KEYS.ns)  # no multiplexed model
    # When its reply comes
    reply(fake, client, req_id, b"outcome")
    # Then its future has the outcome, and nobody else reading it, its result key goes
    assert fut.result(timeout=5) == b"outcome"
    fake.wait_for(lambda: KEYS.result(req_id) in unlinked(fake), what="the result key to be unlinked")
    assert not client._pending


def test_a_detached_reply_resolves_to_DETACHED_and_reading_it_is_a_promised_read(
        fake: FakeRedis, client: CallClient) -> None:
    # Given a request passed by reference to another call before its reply came
    req_id, fut = submit(client)
    assert client.pass_on(req_id, fut) is None
    consumer, _ = submit(client, consumes=(req_id,))
    assert fake.sent("enqueue")[-1].args[4:] == (KEYS.detached(req_id), KEYS.result(req_id))
    # When the reply comes without the value (it went to the result key only)
    reply(fake, client, req_id)
    # Then the caller's future says so, and reading the key counts as one more read
    assert fut.result(timeout=5) == DETACHED
    own = client.watch(req_id, own=True)
    (watch,) = fake.sent("watch")
    assert watch.keys == (KEYS.result(req_id), KEYS.watchers(req_id), KEYS.reads(req_id))
    reply(fake, client, req_id, b"outcome")  # the watcher is told once the value is written
    assert own.result(timeout=5) == b"outcome"
    # And the key stays until the response is dropped: then two reads were promised
    reply(fake, client, consumer, b"other")
    fake.wait_for(lambda: KEYS.result(consumer) in unlinked(fake), what="the consumer's key to be unlinked")
    assert KEYS.result(req_id) not in unlinked(fake)
    client.release(req_id)
    listener_round(fake, client)
    settle = fake.wait_for(lambda: fake.sent("settle"), what="the promised reads to be settled")
    assert [(c.keys, c.args) for c in settle] == [((KEYS.result(req_id), KEYS.reads(req_id)), ("2", 0, TTL_MS))]
    assert not client._pending


def test_pass_on_holds_the_key_and_release_settles_the_promised_reads(fake: FakeRedis, client: CallClient) -> None:
    # Given a response passed to two calls by reference, whose value then came back
    req_id, fut = submit(client)
    assert client.pass_on(req_id, fut) is None
    assert client.pass_on(req_id, fut) is None
    reply(fake, client, req_id, b"outcome")
    assert fut.result(timeout=5) == b"outcome"
    # Then passing it on again still goes by reference: its key is read by the others
    assert client.pass_on(req_id, fut) is None
    # When the response is dropped
    client.release(req_id)
    listener_round(fake, client)
    # Then the listener promises three reads, and the key is never unlinked by the caller
    settle = fake.wait_for(lambda: fake.sent("settle"), what="the promised reads to be settled")
    assert [c.args[:2] for c in settle] == [("3", 0)]
    assert KEYS.result(req_id) not in unlinked(fake)
    assert not client._pending


def test_a_reply_that_comes_after_its_response_was_dropped_leaves_the_key_to_its_readers(
        fake: FakeRedis, client: CallClient) -> None:
    # Given a response passed on by reference, then dropped before its reply came
    req_id, fut = submit(client)
    assert client.pass_on(req_id, fut) is None
    client.release(req_id)
    listener_round(fake, client)
    fake.wait_for(lambda: fake.sent("settle"), what="the promised read to be settled")
    # When the reply comes after all
    reply(fake, client, req_id, b"outcome")
    listener_round(fake, client)
    # Then the caller leaves the key to the reads it promised (settle.lua deletes it)
    assert KEYS.result(req_id) not in unlinked(fake)
    assert not fut.done()  # nobody here waits for it any more
    assert not client._pending


def test_a_response_whose_reply_came_goes_inline(client: CallClient, fake: FakeRedis) -> None:
    req_id, fut = submit(client)
    reply(fake, client, req_id, b"outcome")
    assert fut.result(timeout=5) == b"outcome"
    assert client.pass_on(req_id, fut) == b"outcome"
    client.release(req_id)  # never passed by reference: nothing to settle
    listener_round(fake, client)
    fake.wait_for(lambda: KEYS.result(req_id) in unlinked(fake), what="the result key to be unlinked")
    assert fake.sent("settle") == []


def test_promised_reads_that_could_not_be_sent_go_on_the_next_round(fake: FakeRedis, client: CallClient) -> None:
    # Given a dropped response whose promise the listener could not send
    req_id, fut = submit(client)
    assert client.pass_on(req_id, fut) is None
    fake.severed.add("settle")
    client.release(req_id)
    fake.lpush(client.inbox, b"")
    fake.wait_for(lambda: fake.lost, what="a settle to be lost")
    # When Redis is back
    fake.severed.clear()
    # Then the listener sends it again, once
    settle = fake.wait_for(lambda: fake.sent("settle"), what="the promised read to be settled")
    assert [c.args[:2] for c in settle] == [("1", 0)]
    listener_round(fake, client)
    assert len(fake.sent("settle")) == 1


@pytest.mark.parametrize(("code", "error", "says"), [
    (-2, BackPressureError, "max_queued_requests"), (-3, DeploymentUnavailableError, "failed to start"),
    (-4, RequestCancelledError, "cancelled"), (-1, DeploymentUnavailableError, "not running")])
def test_a_refused_request_fails_with_the_error_of_its_code(
        fake: FakeRedis, client: CallClient, code: int, error: type[Exception], says: str) -> None:
    fake.answers["enqueue"] = code
    req_id, fut = submit(client)
    with pytest.raises(error, match=says):
        fut.result(timeout=5)
    assert not client._pending


def test_a_refused_request_takes_back_the_reads_it_was_promised(fake: FakeRedis, client: CallClient) -> None:
    # Given two responses passed by reference to one call that is refused, one of them
    # dropped (and its promise sent) by then
    held, held_fut = submit(client)
    dropped, dropped_fut = submit(client)
    assert client.pass_on(held, held_fut) is None and client.pass_on(dropped, dropped_fut) is None
    client.release(dropped)
    listener_round(fake, client)
    fake.wait_for(lambda: fake.sent("settle"), what="the dropped response to be settled")
    fake.answers["enqueue"] = -2
    _, fut = submit(client, consumes=(held, dropped))
    with pytest.raises(BackPressureError):
        fut.result(timeout=5)
    # When the one still held is dropped
    client.release(held)
    listener_round(fake, client)
    # Then it promises no read, and the read of the one dropped before is counted as done
    fake.wait_for(lambda: len(fake.sent("settle")) == 3, what="the settles")
    assert [(c.keys[0], c.args[:2]) for c in fake.sent("settle")] == [
        (KEYS.result(dropped), ("1", 0)), (KEYS.result(dropped), ("", 1)), (KEYS.result(held), ("0", 0))]


def test_cancel_stops_waiting_and_fails_the_calls_it_was_passed_to(fake: FakeRedis, client: CallClient) -> None:
    # Given a response passed on by reference, then cancelled before any replica took it
    req_id, fut = submit(client)
    assert client.pass_on(req_id, fut) is None
    assert fut.cancel()
    fake.answers["cancel"] = 1
    client.cancel("app", "Dep", req_id, b"message")
    # Then the cancellation says other calls read its result, and writes the error for them
    (cancel,) = fake.sent("cancel")
    assert cancel.keys == (KEYS.queue("app", "Dep"), KEYS.cancelled(req_id), KEYS.result(req_id),
                           KEYS.mux_members("app", "Dep"))
    assert cancel.args[3:] == (req_id, "1", KEYS.ns)
    (complete,) = fake.sent("complete")
    assert complete.keys[0] == KEYS.result(req_id)
    ok, error = codec.decode_outcome(complete.args[1])
    assert not ok and error.exc_type is RequestCancelledError
    client.release(req_id)
    listener_round(fake, client)
    fake.wait_for(lambda: fake.sent("settle"), what="the promised read to be settled")
    assert not client._pending


def test_cancel_of_a_request_not_passed_on_forgets_it(fake: FakeRedis, client: CallClient) -> None:
    req_id, fut = submit(client)
    assert fut.cancel()
    client.cancel("app", "Dep", req_id, b"message")
    assert fake.sent("cancel")[0].args[4] == "0"
    assert fake.sent("complete") == []
    assert not client._pending


def test_withdraw_fails_a_request_no_replica_took(fake: FakeRedis, client: CallClient) -> None:
    req_id, fut = submit(client)
    fake.answers["withdraw"] = 1
    client.withdraw("app", "Dep", req_id, b"message")
    (withdraw,) = fake.sent("withdraw")
    assert withdraw.keys == (KEYS.queue("app", "Dep"), KEYS.mux_members("app", "Dep"))
    assert withdraw.args == (KEYS.ns, b"message")
    with pytest.raises(RequestCancelledError, match="withdrawn"):
        fut.result(timeout=5)
    assert not client._pending


def test_a_redis_error_on_send_fails_the_future_with_connection_error(fake: FakeRedis, client: CallClient) -> None:
    fake.severed.add("enqueue")
    _, fut = submit(client)
    with pytest.raises(ConnectionError, match="could not reach Redis"):
        fut.result(timeout=5)
    assert not client._pending


def test_watch_reads_a_result_written_already_or_waits_for_it(fake: FakeRedis, client: CallClient) -> None:
    fake.answers["watch"] = b"now"
    assert client.watch("a" * 32).result(timeout=5) == b"now"
    fake.answers["watch"] = None
    later = client.watch("b" * 32)
    assert fake.sent("watch")[-1].args == (client.inbox, TTL_MS)
    reply(fake, client, "b" * 32, b"later")
    assert later.result(timeout=5) == b"later"
    listener_round(fake, client)
    assert unlinked(fake) == set()  # others' results are not this caller's to delete
    assert not client._pending


def test_requests_pending_when_redis_loses_its_data_fail(monkeypatch, fake: FakeRedis) -> None:
    monkeypatch.setattr(calls, "ALIVE_REFRESH_S", 0.0)  # look on every listener round
    client = CallClient("redis://fake", KEYS, result_ttl_ms=TTL_MS, transport=fake.transport())
    try:
        _, fut = submit(client)
        listener_round(fake, client)  # it has seen this Redis
        fake.run_id = "run-2"  # which restarts, without the epoch key
        listener_round(fake, client)
        with pytest.raises(RequestLostError):
            fut.result(timeout=5)
        assert not client._pending
    finally:
        client.close()


def test_a_stream_is_read_from_where_the_last_read_ended(fake: FakeRedis, client: CallClient) -> None:
    req_id = codec.new_request_id()
    key = KEYS.stream(req_id)
    fake.add_entries(key, {streams.ITEMS: b"1"}, {streams.ITEMS: b"2"})
    seen: list[dict[bytes, bytes]] = []
    entries = client.stream_entries(req_id, lambda: bool(seen) and streams.END in seen[-1])
    seen += [next(entries), next(entries)]
    fake.add_entries(key, {streams.END: b"1"})
    for fields in entries:
        seen.append(fields)
    assert seen == [{streams.ITEMS: b"1"}, {streams.ITEMS: b"2"}, {streams.END: b"1"}]
    assert [read[key] for read in fake.xreads] == ["0-0", b"2-0"]


@pytest.mark.parametrize("cancel", [True, False])
def test_ending_a_stream_deletes_it_and_may_ask_its_writer_to_stop(
        fake: FakeRedis, client: CallClient, cancel: bool) -> None:
    req_id = codec.new_request_id()
    client.end_stream(req_id, cancel=cancel)
    (batch,) = [b for b in fake.batches if any(c.name == "delete" for c in b)]
    expected = [("delete", (KEYS.stream(req_id),), {})]
    if cancel:
        expected.insert(0, ("set", (KEYS.cancelled(req_id), 1), {"px": TTL_MS}))
    assert [(c.name, c.args, c.options) for c in batch] == expected


def test_a_stream_ended_as_its_event_loop_ends_is_still_ended(fake: FakeRedis, client: CallClient) -> None:
    req_id = codec.new_request_id()

    async def main() -> None:
        client.end_stream(req_id, cancel=True)  # the last thing the loop does

    asyncio.run(main())
    fake.wait_for(lambda: fake.sent("delete"), what="the stream to be deleted")
    (batch,) = [b for b in fake.batches if any(c.name == "delete" for c in b)]
    assert [(c.name, c.args[0]) for c in batch] == [("set", KEYS.cancelled(req_id)), ("delete", KEYS.stream(req_id))]


def test_a_reply_to_a_call_from_an_event_loop_resolves_on_that_loop(fake: FakeRedis, client: CallClient) -> None:
    async def main() -> bytes:
        req_id, fut = submit(client)
        inbox = client.reply_inbox()
        assert inbox != client.inbox  # the loop's own inbox
        fake.lpush(inbox, req_id.encode() + b"outcome")
        return await bridge.wait(fut)

    assert asyncio.run(main()) == b"outcome"
    fake.wait_for(lambda: unlinked(fake), what="the result key to be unlinked")
    assert not client._pending


def test_a_stream_is_read_on_an_event_loop(fake: FakeRedis, client: CallClient) -> None:
    req_id = codec.new_request_id()
    fake.add_entries(KEYS.stream(req_id), {streams.ITEMS: b"1"}, {streams.END: b"1"})

    async def main() -> list[dict[bytes, bytes]]:
        seen: list[dict[bytes, bytes]] = []
        async for fields in client.stream_entries_async(req_id, lambda: bool(seen) and streams.END in seen[-1]):
            seen.append(fields)
        return seen

    assert asyncio.run(main()) == [{streams.ITEMS: b"1"}, {streams.END: b"1"}]


def test_close_stops_the_listener_settles_what_was_dropped_and_refuses_calls(
        fake: FakeRedis, client: CallClient) -> None:
    # Given a response passed on and dropped just before the client closes
    req_id, fut = submit(client)
    assert client.pass_on(req_id, fut) is None
    client.release(req_id)
    # When it closes
    client.close()
    # Then its listener is gone and said so, the drop is settled, and the connection closed
    assert not client._listener.is_alive()
    assert Keys.alive(client.inbox) not in fake.strings
    assert [c.args[:2] for c in fake.sent("settle")] == [("1", 0)]
    assert fake.closed and client.closed
    with pytest.raises(RuntimeError, match="closed"):
        submit(client)
