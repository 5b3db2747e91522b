"""``@serve.batch``: callers send one item each; the method gets a list and returns a list.

The algorithm of Ray Serve's original ``batching.py`` (2022): one queue per replica
object and method, filled by concurrent callers on the replica's event loop. A batch is
handed to the method when it holds ``max_batch_size`` items, or ``batch_wait_timeout_s``
after its first item arrived; at most ``max_concurrent_batches`` run at once.

A batch holds requests for one multiplexed model: requests for several are split into a
batch per model, run together, each seeing its model in
``serve.get_multiplexed_model_id()`` (as in Ray Serve).

Because batches fill from concurrent requests, a replica accepts
``max_batch_size * max_concurrent_batches`` requests at once for a deployment with a
batch method, unless ``max_ongoing_requests`` was set explicitly (see ``replica.py``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from typing import Any

from .runtime import multiplex  # a module, not its ContextVar: call_one is pickled by value

#: Ray Serve's defaults.
DEFAULT_MAX_BATCH_SIZE = 10
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.01
DEFAULT_MAX_CONCURRENT_BATCHES = 1


_function_queues: dict[tuple[str, int], _BatchQueue] = {}
#: A caller's item, its future, and the multiplexed model of its request.
_Item = tuple[Any, "asyncio.Future[Any]", str]


def _queue_for(func: Callable[..., Any], owner: Any, loop: asyncio.AbstractEventLoop, *settings: Any) -> _BatchQueue:
    """The batch queue of ``func`` on ``owner`` (or of a plain function) for ``loop``.

    Queues live on the object, or in this module for functions, never in the decorated
    function's closure or globals: that function is pickled to travel to the replicas.
    """
    queues = _function_queues if owner is None else owner.__dict__.setdefault("_mq_batch_queues", {})
    key = (func.__qualname__, id(loop))
    queue = queues.get(key)
    if queue is None or queue.loop is not loop:
        queue = queues[key] = _BatchQueue(func, owner, *settings)
    return queue


class _BatchQueue:
    def __init__(self, func: Callable[..., Any], owner: Any, max_batch_size: int, timeout_s: float,
                 max_concurrent_batches: int) -> None:
        self.func = func
        self.owner = owner
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self.items: asyncio.Queue[_Item] = asyncio.Queue()
        self.slots = asyncio.Semaphore(max_concurrent_batches)
        self.loop = asyncio.get_running_loop()
        self.runner = self.loop.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self.slots.acquire()
            batch = await self._next_batch()
            self.loop.create_task(self._process(batch))

    async def _next_batch(self) -> list[_Item]:
        batch = [await self.items.get()]
        deadline = self.loop.time() + self.timeout_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self.items.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.items.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _process(self, batch: list[_Item]) -> None:
        try:
            by_model: dict[str, list[_Item]] = {}
            for entry in batch:
                by_model.setdefault(entry[2], []).append(entry)
            if len(by_model) == 1:
                await self._process_one(*next(iter(by_model.items())))
            else:  # a task per model: each context says its own
                await asyncio.gather(*(self._process_one(model, entries) for model, entries in by_model.items()))
        finally:
            self.slots.release()

    async def _process_one(self, model: str, batch: list[_Item]) -> None:
        """One batch of requests for ``model``, in a task of its own (whose context is set
        to say the model)."""
        multiplex.current_model.set(model)
        try:
            live = [(item, fut) for item, fut, _ in batch if not fut.done()]  # cancelled callers drop out
            if not live:
                return
            items = [item for item, _ in live]
            args = (items,) if self.owner is None else (self.owner, items)
            results = await self.func(*args)
            if not isinstance(results, (list, tuple)) or len(results) != len(items):
                got = f"{len(results)} results" if isinstance(results, (list, tuple)) else type(results).__name__
                raise TypeError(f"@serve.batch method {self.func.__qualname__} returned {got} for a batch of "
                                f"{len(items)}; it must return a list with one result per input, in order.")
            for (_, fut), result in zip(live, results):
                if not fut.done():
                    fut.set_result(result)
        except Exception as e:
            for _, fut, _ in batch:
                if not fut.done():
                    fut.set_exception(e)


def batch(_func: Callable[..., Any] | None = None, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
          batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_TIMEOUT_S,
          max_concurrent_batches: int = DEFAULT_MAX_CONCURRENT_BATCHES) -> Any:
    """Batch calls to an async method (or function) that takes a list and returns a list.

    Example::

        @serve.deployment
        class Model:
            @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
            async def predict(self, inputs: list[str]) -> list[int]:
                return [len(x) for x in inputs]

            async def __call__(self, text: str) -> int:
                return await self.predict(text)      # one item in, its own result out

    Generator methods are not supported (a clear ``TypeError`` at decoration).
    """
    if not isinstance(max_batch_size, int) or isinstance(max_batch_size, bool) or max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
    if not isinstance(batch_wait_timeout_s, (int, float)) or batch_wait_timeout_s < 0:
        raise ValueError(f"batch_wait_timeout_s must be a number >= 0, got {batch_wait_timeout_s!r}")
    if not isinstance(max_concurrent_batches, int) or max_concurrent_batches < 1:
        raise ValueError(f"max_concurrent_batches must be an int >= 1, got {max_concurrent_batches!r}")

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func):
            raise TypeError(f"@serve.batch on generator {func.__qualname__} is not supported by mqserve; "
                            "return a list of results instead.")
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"@serve.batch needs an async function; make {func.__qualname__} `async def`.")
        @functools.wraps(func)
        async def call_one(*args: Any) -> Any:
            if len(args) == 2:
                owner, item = args
            elif len(args) == 1:
                owner, item = None, args[0]
            else:
                raise TypeError(f"{func.__qualname__} is batched: call it with exactly one item")
            loop = asyncio.get_running_loop()
            queue = _queue_for(func, owner, loop, max_batch_size, float(batch_wait_timeout_s),
                               max_concurrent_batches)
            fut: asyncio.Future[Any] = loop.create_future()
            queue.items.put_nowait((item, fut, multiplex.current_model.get()))
            return await fut

        call_one._mq_batch_capacity = max_batch_size * max_concurrent_batches  # type: ignore[attr-defined]  # a function takes attributes; read back with getattr
        return call_one

    return decorate(_func) if _func is not None else decorate


def batch_capacity(target: Any) -> int:
    """The most concurrent requests the batch methods of ``target`` can use (0 if none)."""
    if inspect.isfunction(target):
        return int(getattr(target, "_mq_batch_capacity", 0))
    cls = type(target)
    members = [inspect.getattr_static(cls, name, None) for name in dir(cls)]
    return max((getattr(m, "_mq_batch_capacity", 0) for m in members), default=0)
