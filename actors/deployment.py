"""``Deployment`` and ``Application``: what ``@serve.deployment`` and ``.bind()`` build.

An application is a graph of bound deployments; ``build_app`` walks it, names each
deployment uniquely within the app, and replaces every bound deployment found in
constructor arguments with a handle: inside lists, tuples, dicts and sets, and inside
any other picklable object (a dataclass, a config object), as Ray finds them, by
pickling the object.
"""

from __future__ import annotations

import inspect
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from .config import ConfigError, DeploymentConfig


class Deployment:
    """A class or function made servable by ``@serve.deployment``; ``.bind()`` it to deploy."""

    def __init__(self, func_or_class: type | Callable[..., Any], name: str,
                 config: DeploymentConfig) -> None:
        if not (inspect.isclass(func_or_class) or inspect.isfunction(func_or_class)):
            raise TypeError(f"@serve.deployment must decorate a class or a function, got {func_or_class!r}")
        self._func_or_class = func_or_class
        self._name = name
        self._config = config

    @property
    def name(self) -> str:
        return self._name

    @property
    def func_or_class(self) -> type | Callable[..., Any]:
        return self._func_or_class

    @property
    def config(self) -> DeploymentConfig:
        return self._config

    @property
    def num_replicas(self) -> Any:
        return self._config.num_replicas

    @property
    def max_ongoing_requests(self) -> int:
        return self._config.max_ongoing_requests

    @property
    def user_config(self) -> Any:
        return self._config.user_config

    def bind(self, *args: Any, **kwargs: Any) -> Application:
        """Bind constructor arguments; bound deployments among them become handles at runtime."""
        return Application(self, args, kwargs)

    def options(self, *, name: str | None = None, **options: Any) -> Deployment:
        """A copy with some options changed (same keywords as ``@serve.deployment``)."""
        options.pop("version", None)  # Ray's deprecated option; versions are per deploy here
        return Deployment(self._func_or_class, name or self._name, self._config.with_options(**options))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"Deployment '{self._name}' cannot be constructed directly. "
            "Use `.bind()` to build an application and `serve.run()` to deploy it.")

    def __repr__(self) -> str:
        return f"Deployment(name={self._name!r})"


class Application:
    """A deployment with bound constructor arguments: the unit ``serve.run`` deploys."""

    def __init__(self, deployment: Deployment, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._deployment = deployment
        self._args = args
        self._kwargs = kwargs

    @property
    def deployment(self) -> Deployment:
        return self._deployment

    def __repr__(self) -> str:
        return f"Application({self._deployment.name!r})"


@dataclass(frozen=True)
class DeploymentPlan:
    """One deployment of a built application, ready to register."""

    name: str
    func_or_class: Any
    init_args: tuple[Any, ...]
    init_kwargs: dict[str, Any]
    config: DeploymentConfig


def build_app(app: Application, make_handle: Callable[[str], Any]) -> tuple[str, list[DeploymentPlan]]:
    """Name every deployment of ``app`` and swap nested applications for handles.

    Returns the ingress deployment's name and the plans, dependencies first.
    ``make_handle(name)`` builds the handle that replaces a bound deployment.
    """
    if not isinstance(app, Application):
        raise TypeError(
            f"serve.run() takes an application built with Deployment.bind(), got {type(app).__name__}. "
            "Did you forget to call .bind()?")
    names: dict[int, str] = {}
    taken: set[str] = set()
    plans: list[DeploymentPlan] = []

    def visit(node: Application, path: tuple[int, ...]) -> str:
        if id(node) in names:
            return names[id(node)]
        if id(node) in path:
            raise ConfigError("the application graph has a cycle")
        name = _unique(node.deployment.name, taken)
        taken.add(name)

        def swap(value: Any) -> Any:
            if isinstance(value, Application):
                return make_handle(visit(value, path + (id(node),)))
            if isinstance(value, _CONTAINERS):
                return _map_containers(value, swap)
            return _swap_inside(value, swap)

        args = tuple(swap(a) for a in node._args)
        kwargs = {k: swap(v) for k, v in node._kwargs.items()}
        names[id(node)] = name
        plans.append(DeploymentPlan(name, node.deployment.func_or_class, args, kwargs, node.deployment.config))
        return name

    ingress = visit(app, ())
    return ingress, plans


def check_user_config(plan: DeploymentPlan) -> None:
    """Refuse a ``user_config`` that no replica could apply, with Ray's errors. Ray finds
    out when a replica starts; here ``serve.run`` fails before anything is deployed.

    Raises:
        ConfigError: a ``RayServeException`` and a ``ValueError``, as Ray raises for a
            function (``ValueError``) and for a class without ``reconfigure``
            (``RayServeException``).
    """
    if plan.config.user_config is None:
        return
    if not inspect.isclass(plan.func_or_class):
        raise ConfigError(
            f"deployment_def must be a class to use user_config: deployment '{plan.name}' is a function. "
            "Make it a class with a reconfigure(self, user_config) method, or drop its user_config.")
    if not callable(getattr(plan.func_or_class, "reconfigure", None)):
        raise ConfigError(
            f"user_config specified but deployment {plan.name} missing reconfigure method. "
            "Add a reconfigure(self, user_config) method to the class, or drop its user_config.")


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    i = 1
    while f"{name}_{i}" in taken:
        i += 1
    return f"{name}_{i}"


_CONTAINERS = (list, tuple, dict, set, frozenset)
_PLAIN = (str, bytes, int, float, bool, type(None))


def _swap_inside(value: Any, swap: Callable[[Any], Any]) -> Any:
    """``value`` with the applications it holds swapped, found by pickling it (a copy;
    ``value`` itself if it holds none, or cannot be pickled: that error is reported
    where the deployment is registered, naming it)."""
    if isinstance(value, _PLAIN) or inspect.isclass(value) or inspect.isroutine(value):
        return value
    found: list[Application] = []
    buffer = io.BytesIO()
    try:
        _Finder(buffer, found).dump(value)
    except Exception:
        return value
    if not found:
        return value
    return _Filler(io.BytesIO(buffer.getvalue()), [swap(app) for app in found]).load()


class _Finder(cloudpickle.Pickler):
    """Pickles a value, leaving a numbered reference where an application stands."""

    def __init__(self, file: io.BytesIO, found: list[Application]) -> None:
        super().__init__(file)
        self.found = found

    def persistent_id(self, obj: Any) -> int | None:
        if isinstance(obj, Application):
            self.found.append(obj)
            return len(self.found) - 1
        return None


class _Filler(pickle.Unpickler):
    """Unpickles what :class:`_Finder` wrote, with each reference's replacement."""

    def __init__(self, file: io.BytesIO, replacements: list[Any]) -> None:
        super().__init__(file)
        self.replacements = replacements

    def persistent_load(self, pid: Any) -> Any:
        return self.replacements[pid]


def _map_containers(value: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(value, list):
        return [fn(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(fn(v) for v in value)
    if isinstance(value, dict):
        return {k: fn(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return type(value)(fn(v) for v in value)
    return value
