"""The one module where threads and event loops meet."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest

from actors.runtime import bridge


def test_running_loop_is_none_in_a_plain_thread_and_the_loop_inside_one() -> None:
    assert bridge.running_loop() is None

    async def inside() -> bool:
        return bridge.running_loop() is asyncio.get_running_loop()

    assert asyncio.run(inside())


def test_a_step_batch_hands_over_what_one_loop_step_posted_together() -> None:
    flushed: list[list[int]] = []

    async def main() -> None:
        batch = bridge.StepBatch(asyncio.get_running_loop(), flushed.append)
        for i in range(3):
            batch.post(i)  # one step of the loop
        await asyncio.sleep(0)
        batch.post(3)  # the next one
        await asyncio.sleep(0)

    asyncio.run(main())
    assert flushed == [[0, 1, 2], [3]]


def test_a_step_batch_takes_posts_from_other_threads() -> None:
    flushed: list[list[int]] = []

    async def main() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def flush(items: list[int]) -> None:
            flushed.append(items)
            if sum(len(f) for f in flushed) == 100:
                done.set()

        batch = bridge.StepBatch(loop, flush)
        threads = [threading.Thread(target=lambda k=k: [batch.post_threadsafe(k * 10 + i) for i in range(10)])
                   for k in range(10)]
        for thread in threads:
            thread.start()
        await asyncio.wait_for(done.wait(), 10)
        for thread in threads:
            thread.join()

    asyncio.run(main())
    assert sorted(x for f in flushed for x in f) == list(range(100))


def test_wait_resolves_futures_set_by_other_threads_and_keeps_errors_and_cancels() -> None:
    async def main() -> None:
        ok, bad, gone = (concurrent.futures.Future() for _ in range(3))
        setter = threading.Timer(0.01, lambda: (ok.set_result(7), bad.set_exception(KeyError("k")), gone.cancel()))
        setter.start()
        assert await bridge.wait(ok) == 7
        with pytest.raises(KeyError):
            await bridge.wait(bad)
        with pytest.raises(asyncio.CancelledError):
            await bridge.wait(gone)
        already: concurrent.futures.Future[int] = concurrent.futures.Future()
        already.set_result(1)
        assert await bridge.wait(already) == 1

    asyncio.run(main())


def test_submit_runs_a_coroutine_on_another_threads_loop_and_run_sync_off_the_loop() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        async def where() -> tuple[bool, str]:
            name = await bridge.run_sync(lambda prefix, suffix="": prefix + threading.current_thread().name + suffix,
                                         "on ", suffix="!")
            return threading.current_thread() is thread, name

        on_loop, name = bridge.submit(loop, where()).result(timeout=10)
        assert on_loop and name.startswith("on ") and name.endswith("!") and thread.name not in name
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
