"""@serve.batch on replicas: batches fill from concurrent requests beyond the default cap."""

from __future__ import annotations

import asyncio

from actors import serve


@serve.deployment
class Batcher:
    def __init__(self) -> None:
        self.sizes: list[int] = []

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.5)
    async def handle(self, items: list[int]) -> list[int]:
        self.sizes.append(len(items))
        return [i * 10 for i in items]

    async def __call__(self, x: int) -> int:
        return await self.handle(x)

    def sizes_seen(self) -> list[int]:
        return self.sizes


def _send_16(handle) -> list[int]:
    async def main() -> list[int]:
        return await asyncio.gather(*[handle.remote(i) for i in range(16)])

    return asyncio.run(main())


def test_batches_fill_beyond_the_default_max_ongoing(serve_instance) -> None:
    # Given max_ongoing_requests left at its default (5) and batches of up to 16
    handle = serve.run(Batcher.bind(), name="batcher", route_prefix="/batcher")
    # When 16 callers call at once
    assert _send_16(handle) == [i * 10 for i in range(16)]
    # Then one batch held all 16: the replica let them in together
    assert max(handle.sizes_seen.remote().result()) == 16


def test_an_explicit_max_ongoing_requests_caps_the_batches(serve_instance) -> None:
    handle = serve.run(Batcher.options(max_ongoing_requests=4).bind(), name="capped", route_prefix="/capped")
    assert _send_16(handle) == [i * 10 for i in range(16)]
    assert max(handle.sizes_seen.remote().result()) <= 4
