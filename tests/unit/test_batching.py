"""@serve.batch in one event loop, without processes."""

from __future__ import annotations

import asyncio

import pytest

from actors import serve
from actors.batching import batch_capacity


class Model:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def double(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        return [2 * i for i in items]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def fails(self, items: list[int]) -> list[int]:
        raise ValueError(f"bad batch of {len(items)}")

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def short(self, items: list[int]) -> list[int]:
        return items[:-1]


def test_concurrent_callers_share_batches_and_get_their_own_results() -> None:
    model = Model()

    async def main() -> list[int]:
        return await asyncio.gather(*[model.double(i) for i in range(10)])

    assert asyncio.run(main()) == [2 * i for i in range(10)]
    assert sorted(i for b in model.batches for i in b) == list(range(10))
    assert max(len(b) for b in model.batches) == 4  # full batches, never above the maximum
    assert len(model.batches) == 3


def test_a_lone_call_waits_at_most_the_timeout() -> None:
    model = Model()

    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await model.double(5) == 10
        return loop.time() - start

    assert asyncio.run(main()) < 0.5
    assert model.batches == [[5]]


def test_an_exception_reaches_every_caller_of_the_batch() -> None:
    model = Model()

    async def main() -> list[object]:
        return await asyncio.gather(*[model.fails(i) for i in range(3)], return_exceptions=True)

    errors = asyncio.run(main())
    assert all(isinstance(e, ValueError) and "bad batch of 3" in str(e) for e in errors)


def test_a_wrong_length_result_is_a_clear_error_to_each_caller() -> None:
    model = Model()

    async def main() -> list[object]:
        return await asyncio.gather(*[model.short(i) for i in range(3)], return_exceptions=True)

    errors = asyncio.run(main())
    assert all(isinstance(e, TypeError) and "returned 2 results for a batch of 3" in str(e) for e in errors)


def test_functions_batch_too_and_bad_uses_are_refused() -> None:
    @serve.batch(max_batch_size=3)
    async def upper(items: list[str]) -> list[str]:
        return [s.upper() for s in items]

    async def main() -> list[str]:
        return await asyncio.gather(*[upper(s) for s in "abcde"])

    assert asyncio.run(main()) == list("ABCDE")
    with pytest.raises(TypeError, match="async"):
        serve.batch(lambda items: items)
    with pytest.raises(TypeError, match="generator"):
        @serve.batch
        async def gen(items):
            yield items
    with pytest.raises(ValueError):
        serve.batch(max_batch_size=0)


def test_batch_capacity_counts_size_times_concurrency() -> None:
    class Two:
        @serve.batch(max_batch_size=16, max_concurrent_batches=2)
        async def a(self, items):
            return items

    assert batch_capacity(Two()) == 32
    assert batch_capacity(Model()) == 8
    assert batch_capacity(object()) == 0
