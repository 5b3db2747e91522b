"""The replica's side of model multiplexing: the models a ``@serve.multiplexed`` loader
keeps, and the model id of the request being served.

Each loader has a :class:`ModelCache` per object (or per function) on the replica: at
most ``max_models`` models, evicted least recently used first. As in Ray Serve, one load
or eviction runs at a time, and an evicted model's ``__del__`` is called (awaited if it
is a coroutine function) before the next model loads; unlike Ray, only then, not again
when Python frees the model. Unlike Ray, concurrent requests
for a model that is still loading wait for that one load, even if the request that
started it is cancelled; it is never repeated.

The cache tells routing what the replica holds (:class:`Holdings`): a model as its load
starts, and its eviction. The replica attaches the Redis side (:func:`attach`); unit
tests attach a fake.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any, Protocol

from . import bridge

logger = logging.getLogger("mqserve.replica")

#: The multiplexed model id of the request this code serves ('' if none): set by the
#: replica for each request (``serve.get_multiplexed_model_id()`` reads it), and for each
#: batch of a ``@serve.batch`` method, whose batches hold requests for one model.
current_model: ContextVar[str] = ContextVar("mqserve_multiplexed_model_id", default="")

Loader = Callable[[str], Awaitable[Any]]


class Holdings(Protocol):
    """Where a replica says which models it holds (``broker.mux.Holdings`` in a replica)."""

    async def hold(self, model_ids: Iterable[str]) -> None: ...

    async def drop(self, model_id: str) -> None: ...


_holdings: Holdings | None = None
#: Every cache of this process, for the replica's shutdown and for a Redis that lost its data.
_caches: weakref.WeakSet[ModelCache] = weakref.WeakSet()
#: Caches of loaders that are plain functions (a method's live on its object).
_function_caches: dict[str, ModelCache] = {}


def attach(holdings: Holdings | None) -> None:
    """Run the multiplexed loaders of this process (a replica), reporting to ``holdings``."""
    global _holdings
    _holdings = holdings


class ModelCache:
    """The models one loader keeps on this replica."""

    def __init__(self, load: Loader, max_models: int, holdings: Holdings) -> None:
        self.load = load
        #: At most this many models (-1: no limit).
        self.max_models = max_models
        self.holdings = holdings
        #: Loaded models, least recently used first.
        self.models: OrderedDict[str, Any] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Any]] = {}
        self._lock = asyncio.Lock()  # one load or eviction at a time, as in Ray Serve

    async def get(self, model_id: str) -> Any:
        """The model ``model_id``: loaded already (now the most recently used), or loaded
        now, evicting the least recently used model if the cache is full."""
        if type(model_id) is not str:
            raise TypeError(f"The model ID must be a string, got {type(model_id).__name__}.")
        if not model_id:
            raise ValueError("The model ID cannot be empty: pass the id of the model to load.")
        if model_id in self.models:
            self.models.move_to_end(model_id)
            return self.models[model_id]
        loading = self._loading.get(model_id)
        if loading is None:
            loading = self._loading[model_id] = asyncio.ensure_future(self._load(model_id))
            loading.add_done_callback(lambda done: self._loaded(model_id, done))
        # Shielded: a cancelled request stops waiting, while the load goes on for the others.
        return await asyncio.shield(loading)

    def _loaded(self, model_id: str, done: asyncio.Future[Any]) -> None:
        if self._loading.get(model_id) is done:
            del self._loading[model_id]
        if not done.cancelled():
            done.exception()  # retrieved: a failed load whose waiters all left is not "never retrieved"

    async def _load(self, model_id: str) -> Any:
        await self.holdings.hold([model_id])  # routing sends its requests here from now on
        try:
            async with self._lock:
                while 0 < self.max_models <= len(self.models):
                    await self._evict()
                logger.info("loading model '%s'", model_id)
                self.models[model_id] = await self.load(model_id)
                return self.models[model_id]
        except BaseException:
            await self.holdings.drop(model_id)
            raise

    async def _evict(self) -> None:
        """Unload the least recently used model; an error of its ``__del__`` is raised
        (to the request whose load needed the room, as in Ray Serve)."""
        model_id, model = self.models.popitem(last=False)
        logger.info("unloading model '%s'", model_id)
        await self.holdings.drop(model_id)
        unload = getattr(model, "__del__", None)
        if unload is None:
            return
        try:
            if inspect.iscoroutinefunction(unload):
                await unload()
            else:
                await bridge.run_sync(unload)
        finally:
            _unloaded(model)

    async def unload_all(self) -> None:
        """Unload every model (the replica stops), logging errors of ``__del__``."""
        async with self._lock:
            while self.models:
                try:
                    await self._evict()
                except Exception:
                    logger.exception("unloading a model failed")

    async def report(self) -> None:
        """Tell routing again what this cache holds (Redis lost its data)."""
        await self.holdings.hold([*self.models, *self._loading])


_quiet: dict[type, type] = {}


def _no_del(self: Any) -> None:
    pass


def _unloaded(model: Any) -> None:
    """Keep Python from calling ``__del__`` again when it frees a model the cache unloaded
    (twice would release its resources twice, and an ``async def __del__`` called by
    Python is never awaited): the model becomes an instance of a subclass whose
    ``__del__`` does nothing. Objects whose class cannot change keep theirs."""
    cls = type(model)
    try:
        quiet = _quiet.get(cls)
        if quiet is None:
            quiet = _quiet[cls] = type(cls.__name__, (cls,), {
                "__slots__": (), "__del__": _no_del, "__module__": cls.__module__, "__qualname__": cls.__qualname__})
        model.__class__ = quiet
    except TypeError:
        pass


def cache_for(func: Callable[..., Any], owner: Any, max_models: int) -> ModelCache:
    """The cache of loader ``func`` on ``owner`` (its ``self``; None for a function).

    Caches live on the object, or in this module for functions, never in the decorated
    function's closure: that function is pickled to travel to the replicas."""
    caches = _function_caches if owner is None else owner.__dict__.setdefault("_mq_model_caches", {})
    key = f"{func.__module__}.{func.__qualname__}"
    cache: ModelCache | None = caches.get(key)
    if cache is None:
        if _holdings is None:
            raise RuntimeError("`@serve.multiplexed` can only be used within a deployment: call the loader from "
                               "a method of a deployment's replica, not from the driver.")
        load = func if owner is None else func.__get__(owner)
        cache = caches[key] = ModelCache(load, max_models, _holdings)
        _caches.add(cache)
    return cache


async def unload_all() -> None:
    """Unload the models of every cache (the replica stops): their ``__del__`` run."""
    for cache in list(_caches):
        await cache.unload_all()


async def report_all() -> None:
    """Tell routing again what every cache holds (after Redis lost its data)."""
    for cache in list(_caches):
        await cache.report()
