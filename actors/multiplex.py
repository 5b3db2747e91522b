"""Model multiplexing (``ray.serve.multiplexed``): many models served by a few replicas.

A deployment loads models by id with an async method decorated ``@serve.multiplexed``;
each replica keeps the most recently used ones. Callers name the model of each request
with ``handle.options(multiplexed_model_id=...)`` or the HTTP header
``serve_multiplexed_model_id``, and mqserve routes the request to a replica that holds
that model when one has a free slot (see ``broker/mux.py``). Inside the request,
``serve.get_multiplexed_model_id()`` says which model it is for.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from .runtime.multiplex import cache_for, current_model

__all__ = ["DEFAULT_MAX_NUM_MODELS_PER_REPLICA", "SERVE_MULTIPLEXED_MODEL_ID", "get_multiplexed_model_id",
           "multiplexed"]

#: Ray Serve's default: models each replica keeps per loader.
DEFAULT_MAX_NUM_MODELS_PER_REPLICA = 3
#: The HTTP request header naming a request's model (Ray Serve's); ``serve-multiplexed-model-id``
#: works too, as proxies may turn underscores into hyphens.
SERVE_MULTIPLEXED_MODEL_ID = "serve_multiplexed_model_id"

_MARKER = "_mq_multiplexed"


def multiplexed(func: Callable[..., Any] | None = None, max_num_models_per_replica: int =
                DEFAULT_MAX_NUM_MODELS_PER_REPLICA) -> Any:
    """Make an async method (or function) taking a model id the loader of multiplexed
    models: calling it returns the model, loaded once per replica and kept among the
    ``max_num_models_per_replica`` most recently used (-1: no limit). An evicted model's
    ``__del__`` is called (awaited if it is ``async``).

    Example::

        @serve.deployment
        class Models:
            @serve.multiplexed(max_num_models_per_replica=3)
            async def get_model(self, model_id: str) -> Any:
                return await load_from_storage(model_id)

            async def __call__(self, text: str) -> str:
                model = await self.get_model(serve.get_multiplexed_model_id())
                return model(text)

        handle.options(multiplexed_model_id="m1").remote("hello")

    Raises:
        TypeError: the loader is not an async function taking the model id (after
            ``self``), or ``max_num_models_per_replica`` is not an int.
        ValueError: ``max_num_models_per_replica`` is neither positive nor -1.
    """
    if func is not None:
        _check_loader(func)
    if not isinstance(max_num_models_per_replica, int) or isinstance(max_num_models_per_replica, bool):
        raise TypeError(f"max_num_models_per_replica must be an int, got {max_num_models_per_replica!r}.")
    if max_num_models_per_replica != -1 and max_num_models_per_replica <= 0:
        raise ValueError(f"max_num_models_per_replica must be positive (or -1 for no limit), "
                         f"got {max_num_models_per_replica}.")

    def decorate(loader: Callable[..., Any]) -> Callable[..., Any]:
        is_method = _check_loader(loader) == 2

        @functools.wraps(loader)
        async def load(*args: Any) -> Any:
            if len(args) != (2 if is_method else 1):
                raise TypeError(f"{loader.__qualname__} is @serve.multiplexed: call it with exactly one argument, "
                                f"the model id (a str); got {len(args) - is_method}.")
            owner = args[0] if is_method else None
            return await cache_for(loader, owner, max_num_models_per_replica).get(args[-1])

        setattr(load, _MARKER, max_num_models_per_replica)
        return load

    return decorate(func) if func is not None else decorate


def _check_loader(func: Any) -> int:
    """The number of parameters of a valid loader (1, or 2 with ``self``)."""
    if not callable(func) or inspect.isclass(func):
        raise TypeError("@serve.multiplexed decorates an async function or method that loads a model by id.")
    if not inspect.iscoroutinefunction(func):
        raise TypeError(f"@serve.multiplexed needs an async function: make {func.__qualname__} `async def`.")
    count = len(inspect.signature(func).parameters)
    if count not in (1, 2):
        raise TypeError(f"@serve.multiplexed decorates a function taking the model id (`model_id: str`, after "
                        f"`self` for a method); {func.__qualname__} takes {count} parameters.")
    return count


def get_multiplexed_model_id() -> str:
    """The multiplexed model id of the request being served ('' if it named none).

    Set by the caller with ``handle.options(multiplexed_model_id=...)`` or the HTTP
    header ``serve_multiplexed_model_id``. In a ``@serve.batch`` method it is the model
    of the whole batch: batches are split by model."""
    return current_model.get()


def checked_model_id(value: Any) -> str:
    """A model id given to ``handle.options(multiplexed_model_id=)``."""
    if not isinstance(value, str):
        raise TypeError(f"multiplexed_model_id must be a str (the model's id), got {type(value).__name__}.")
    return value


def model_id_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The model an HTTP request names in its ``serve_multiplexed_model_id`` header
    (any case, hyphens for underscores), or ''."""
    for name, value in headers:
        if len(name) == len(SERVE_MULTIPLEXED_MODEL_ID) and \
                name.lower().replace(b"-", b"_") == SERVE_MULTIPLEXED_MODEL_ID.encode():
            return value.decode("latin-1")
    return ""


def uses_multiplexing(func_or_class: Any) -> bool:
    """Whether a deployment has a ``@serve.multiplexed`` loader: a method of the class,
    or a function the deployment function calls by global name. Its requests are then
    routed to replicas by model."""
    if inspect.isclass(func_or_class):
        return any(hasattr(inspect.getattr_static(func_or_class, name, None), _MARKER) for name in dir(func_or_class))
    code, names = getattr(func_or_class, "__code__", None), getattr(func_or_class, "__globals__", {})
    return code is not None and any(hasattr(names.get(name), _MARKER) for name in code.co_names)
