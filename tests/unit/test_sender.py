"""How the calls made on an event loop go out (``actors/runtime/sender.py``), without Redis:
a CallClient on an in-memory transport, whose send lines run what is written on them
and answer in order when the test lets them.

The first call of a loop step is written before it returns; the others of the step go
in one write at its end, or by a thread if the step blocks; replies reach their calls in
order; NOSCRIPT, a lost line, a line that cannot be opened and closing are dealt with.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future

import pytest
import redis

from actors.exceptions import BackPressureError
from actors.runtime import bridge, sender
from actors.runtime.caller import CallClient
from broker import calls, codec, scripts
from tests.unit.caller_setup import KEYS, TTL_MS, submit
from tests.unit.fake_transport import FakeLine, FakeRedis


async def error_of(fut: Future[bytes]) -> BaseException | None:
    try:
        await bridge.wait(fut)
    except Exception as e:
        return e
    return None


async def line_of(fake: FakeRedis, client: CallClient) -> FakeLine:
    """The running loop's send line, once it is open (the loop's channel opens it)."""
    client.reply_inbox()
    deadline = time.monotonic() + 5
    while not (fake.lines and fake.lines[-1].ready):
        assert time.monotonic() < deadline, "timed out waiting for a send line"
        await asyncio.sleep(0)
    return fake.lines[-1]


def test_a_call_on_an_event_loop_is_written_before_remote_returns(fake: FakeRedis, client: CallClient) -> None:
    async def main() -> bytes:
        line = await line_of(fake, client)
        # When a request is sent on the loop
        req_id, fut = submit(client)
        # Then it was written on the line before submit returned: no step of the loop ran
        (enqueue,) = line.written[-1]
        assert (enqueue.name, enqueue.args) == ("enqueue", (b"message", TTL_MS, "", KEYS.ns))
        assert len(fake.sent("enqueue")) == 1  # and nowhere else
        # And its reply still resolves on the loop
        fake.lpush(client.reply_inbox(), req_id.encode() + b"outcome")
        return await bridge.wait(fut)

    assert asyncio.run(main()) == b"outcome"


def test_the_other_calls_of_a_step_share_one_write_at_its_end(fake: FakeRedis, client: CallClient) -> None:
    async def main() -> FakeLine:
        line = await line_of(fake, client)
        # Given three requests sent in one step of the loop
        for _ in range(3):
            submit(client)
        # Then the first was written at once, and the others wait for the step's end
        assert line.writes == [1]
        await asyncio.sleep(0)
        return line

    # When it ends, they go out in one write
    assert asyncio.run(main()).writes == [1, 2]


@pytest.mark.parametrize("line_open", [True, False])
def test_calls_held_by_a_step_that_blocks_are_sent_by_a_thread(
        fake: FakeRedis, client: CallClient, line_open: bool) -> None:
    fake.answers["enqueue"] = -2

    async def main() -> tuple[int, BaseException | None]:
        if line_open:
            await line_of(fake, client)
            submit(client)  # the first of the step: written at once
        else:
            client.reply_inbox()  # the loop's first calls: its line is not open yet
        sent = len(fake.sent("enqueue"))
        # Given a request held until the step ends
        _, held = submit(client)
        # When the loop blocks (as user code would), the request goes out all the same
        fake.wait_for(lambda: len(fake.sent("enqueue")) == sent + 1, what="the held request to be sent")
        return len(fake.lines[0].written) if fake.lines else 0, await error_of(held)

    written, error = asyncio.run(main())
    # By the threads' client, not on the line; and its reply reached its future
    assert written == (1 if line_open else 0)
    assert isinstance(error, BackPressureError)


def test_replies_on_the_line_go_to_their_calls_in_order(fake: FakeRedis, client: CallClient) -> None:
    fake.answers["enqueue"] = lambda c: -2 if c.args[0] == b"refused" else 1
    fake.answers["watch"] = b"read"
    fake.answers["lrem"] = 7
    got: list[object] = []

    def two_commands(batch: scripts.Batch) -> None:
        calls.watch(batch, KEYS, "c" * 32, "an-inbox", TTL_MS)
        batch.command("lrem", "a-list", 1, b"x")

    async def main() -> tuple[Future[bytes], BaseException | None, bytes]:
        line = await line_of(fake, client)
        # Given four ops written while their replies are held, one of two commands
        line.held = True
        queued = client.submit("app", "Dep", codec.new_request_id(), b"message")
        refused = client.submit("app", "Dep", codec.new_request_id(), b"refused")
        client._channel(asyncio.get_running_loop()).post(two_commands, got.append)
        read = client.watch(codec.new_request_id())
        await asyncio.sleep(0)
        assert [[c.name for c in b] for b in line.written] == [["enqueue"], ["enqueue"], ["watch", "lrem"], ["watch"]]
        assert not refused.done() and not read.done() and got == []
        # When they come back
        line.release()
        return queued, await error_of(refused), await bridge.wait(read)

    queued, refused, read = asyncio.run(main())
    # Then each op had its own: the op of two commands the reply of its first
    assert isinstance(refused, BackPressureError)
    assert read == b"read" and got == [b"read"]
    assert not queued.done()  # queued: it waits for its reply


def test_a_call_whose_script_is_not_loaded_runs_again_once_it_is(fake: FakeRedis, client: CallClient) -> None:
    fake.answers["enqueue"] = -2

    async def main() -> list[BaseException | None]:
        line = await line_of(fake, client)
        # Given Redis restarted with an empty script cache
        fake.unloaded.add("enqueue")
        # When two requests are written on the line (each answered NOSCRIPT)
        line.held = True
        _, first = submit(client)
        _, second = submit(client)
        await asyncio.sleep(0)
        assert len(line.written) == 2
        line.release()
        return [await error_of(first), await error_of(second)]

    errors = asyncio.run(main())
    # Then each ran again once the script was loaded, and got the reply of that run
    assert [type(e) for e in errors] == [BackPressureError, BackPressureError]
    assert fake.sent("script-load") and len(fake.sent("enqueue")) == 4
    assert not client._pending


def test_a_lost_line_fails_the_calls_it_did_not_answer_and_the_next_opens_another(
        fake: FakeRedis, client: CallClient) -> None:
    async def main() -> tuple[list[BaseException | None], FakeLine, FakeLine]:
        line = await line_of(fake, client)
        # Given two requests written, not answered yet
        line.held = True
        _, first = submit(client)
        _, second = submit(client)
        await asyncio.sleep(0)
        # When the connection drops
        line.sever()
        errors = [await error_of(first), await error_of(second)]
        # Then the next request goes by step pipeline, and the one after on a new line
        _, third = submit(client)
        new = await line_of(fake, client)
        submit(client)
        return errors, line, new

    errors, lost, new = asyncio.run(main())
    assert all(isinstance(e, ConnectionError) and "could not reach Redis" in str(e) for e in errors)
    assert len(lost.written) == 2 and lost.closed
    assert len(new.written) == 1 and len(fake.sent("enqueue")) == 4


def test_calls_go_by_step_while_no_line_opens(monkeypatch, fake: FakeRedis, client: CallClient) -> None:
    monkeypatch.setattr(sender, "RECONNECT_PAUSE_S", 0.0)
    fake.answers["enqueue"] = -2
    fake.refuse_lines = redis.ConnectionError("refused (fake)")

    async def main() -> tuple[list[BaseException | None], FakeLine]:
        # Given a loop whose line cannot be opened
        client.reply_inbox()
        # When it sends requests
        errors = [await error_of(submit(client)[1]), await error_of(submit(client)[1])]
        # Then they go out by step pipeline, and once Redis lets it, on a line
        fake.refuse_lines = None
        submit(client)
        line = await line_of(fake, client)
        submit(client)
        return errors, line

    errors, line = asyncio.run(main())
    assert [type(e) for e in errors] == [BackPressureError, BackPressureError]
    assert len(fake.lines) == 1 and len(line.written) == 1


def test_closing_the_client_closes_the_lines_of_its_loops(fake: FakeRedis, client: CallClient) -> None:
    async def main() -> FakeLine:
        line = await line_of(fake, client)
        client.close()
        deadline = time.monotonic() + 5
        while not line.closed:
            assert time.monotonic() < deadline, "timed out waiting for the line to close"
            await asyncio.sleep(0)
        return line

    asyncio.run(main())


def test_calls_from_an_event_loop_before_its_line_is_open_share_one_pipeline_per_step(
        fake: FakeRedis, client: CallClient) -> None:
    fake.answers["enqueue"] = -2
    fake.answers["watch"] = b"read"

    async def main() -> tuple[list[BaseException | None], bytes]:
        # Given two requests and a read of a result in the loop's first step
        _, first = submit(client)
        read = client.watch(codec.new_request_id())
        _, second = submit(client)
        return [await error_of(first), await error_of(second)], await bridge.wait(read)

    errors, value = asyncio.run(main())
    # Then they went out together, and each got its own reply
    (batch,) = [b for b in fake.batches if any(c.name == "enqueue" for c in b)]
    assert [c.name for c in batch] == ["enqueue", "watch", "enqueue"]
    assert [type(e) for e in errors] == [BackPressureError, BackPressureError]
    assert value == b"read"
