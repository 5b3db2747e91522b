"""``@serve.ingress``: what happens to the ASGI app when a class is decorated.

As in Ray Serve, the work is done once, on the driver, when the decorator runs:

- the class's FastAPI routes (methods, wherever they sit, also in included routers)
  become routes of a view whose ``self`` is a dependency: the replica's instance
  (:func:`actors.runtime.http.current_instance`), and the method routes of any other
  class decorated with the same app leave it;
- the app is then frozen: a copy (cloudpickle, both ways) is what the deployment
  serves, so one app object can back several ingress deployments, each serving its
  own routes, and routes added to the app later do not change a deployment.
"""

from __future__ import annotations

import copyreg
import inspect
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import cloudpickle

from .exceptions import ServeException

#: Method routes already turned into a view, by endpoint: the class they belong to.
_owners: weakref.WeakKeyDictionary[Any, weakref.ref[type]] = weakref.WeakKeyDictionary()


class IngressError(ServeException, TypeError):
    """``@serve.ingress`` cannot use this app or class; the message says why."""


def prepare(app: Any, cls: type) -> Any:
    """The app ``cls`` serves: its method routes bound to the replica's instance, and
    frozen (see the module's docstring)."""
    _make_picklable()
    if _is_fastapi(app):
        _class_based_view(app, cls)
        for route, _, _ in _routes(app):
            _resolve_annotations(route)
    try:
        return cloudpickle.loads(cloudpickle.dumps(app))
    except Exception as e:
        raise IngressError(f"@serve.ingress could not copy the ASGI app of {cls.__name__} ({e}); "
                           "the app and what its routes reference must be picklable by cloudpickle.") from e


def _is_fastapi(app: Any) -> bool:
    try:
        from fastapi import APIRouter, FastAPI
    except ImportError:
        return False
    return isinstance(app, (FastAPI, APIRouter))


def _class_based_view(app: Any, cls: type) -> None:
    """Turn ``cls``'s method routes of ``app`` into routes of a view (as
    ``fastapi_utils.cbv`` does): FastAPI reads an endpoint's signature to know its
    parameters, so ``self`` becomes a dependency and the others keyword-only. The view
    is included again, so that FastAPI analyses the new signatures."""
    from fastapi import APIRouter, Depends
    from starlette.routing import compile_path

    from .runtime.http import current_instance

    view = APIRouter()
    for route, parent, prefix in [found for found in _routes(app) if _is_method_of(found[0].endpoint, cls)]:
        _remove(parent, route)
        if prefix:  # the include's prefix stays behind with the router it came from
            route.path = prefix + route.path
            route.path_regex, route.path_format, route.param_convertors = compile_path(route.path)
        signature = _signature(route.endpoint)
        params = list(signature.parameters.values())
        if not params:
            raise IngressError(f"Route method {route.endpoint.__qualname__} of an @serve.ingress class must "
                               "take self as its first parameter.")
        first = params[0].replace(default=Depends(current_instance))
        rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params[1:]]
        route.endpoint.__signature__ = signature.replace(parameters=[first, *rest])  # read by inspect.signature
        _owners[route.endpoint] = weakref.ref(cls)
        view.routes.append(route)
    if view.routes:
        app.include_router(view)
    # Method routes of other classes decorated with this app are theirs alone.
    for route, parent, _ in list(_routes(app)):
        owner = _owners.get(route.endpoint)
        if owner is not None and owner() is not cls:
            _remove(parent, route)


def _signature(fn: Any) -> inspect.Signature:
    """``fn``'s signature with its annotations evaluated where it was defined, if they
    can be: the copy of a function that travels by value keeps only the globals its
    code uses, so FastAPI, which reads the signature again on the replica, could not
    resolve an annotation written as a string (``from __future__ import annotations``)."""
    try:
        return inspect.signature(fn, eval_str=True)
    except Exception:
        return inspect.signature(fn)


def _resolve_annotations(route: Any) -> None:
    """Pin the evaluated signatures of a route's endpoint and of its dependencies."""
    calls = [route.endpoint]
    pending = list(getattr(getattr(route, "dependant", None), "dependencies", ()))
    while pending:
        dependant = pending.pop()
        calls.append(dependant.call)
        pending.extend(dependant.dependencies)
    for fn in calls:
        if inspect.isfunction(fn) and "__signature__" not in vars(fn):
            fn.__signature__ = _signature(fn)  # type: ignore[attr-defined]  # functions take attributes; inspect.signature reads this one


def _routes(router: Any, prefix: str = "") -> Iterator[tuple[Any, Any, str]]:
    """``(route, the router holding it, include prefix)`` for every FastAPI route under
    ``router``, also inside included routers (FastAPI >= 0.137 keeps them nested)."""
    from fastapi import routing

    # FastAPI >= 0.137 keeps included routers as nodes; older ones copy their routes in.
    included = getattr(routing, "_IncludedRouter", None)
    holder = getattr(router, "router", router)  # a FastAPI app, or an APIRouter
    for route in list(holder.routes):
        if isinstance(route, (routing.APIRoute, routing.APIWebSocketRoute)):
            yield route, holder, prefix
        elif included is not None and isinstance(route, included):
            yield from _routes(route.original_router, prefix + route.include_context.prefix)


def _is_method_of(endpoint: Any, cls: type) -> bool:
    """Whether ``endpoint`` was defined in the body of ``cls`` or of a class it inherits
    from (by qualified name, as Ray does: a method redefined under the same name for
    another HTTP method is still one of its routes)."""
    qualname = getattr(inspect.unwrap(endpoint), "__qualname__", "")
    return any(qualname.startswith(base.__qualname__ + ".") for base in cls.__mro__ if base is not object)


def _remove(router: Any, route: Any) -> None:
    router.routes.remove(route)
    changed = getattr(router, "_mark_routes_changed", None)
    if changed is not None:  # FastAPI >= 0.137 caches what included routers hold
        changed()


_registered = False
_registering = threading.Lock()


def _make_picklable() -> None:
    """Let Starlette and FastAPI apps travel by cloudpickle: Starlette's ``State``
    recurses forever when unpickled (its ``__getattr__`` reads ``_state`` before it
    exists), and FastAPI's included routers hold a lock and caches."""
    global _registered
    with _registering:
        if _registered:
            return
        from starlette.datastructures import State

        copyreg.pickle(State, _reduce_state)
        try:
            from fastapi import routing
        except ImportError:
            routing = None  # type: ignore[assignment]  # FastAPI is optional
        included = getattr(routing, "_IncludedRouter", None)
        if included is not None:
            copyreg.pickle(included, _reduce_included_router)
        _registered = True


def _reduce_state(state: Any) -> Any:
    return type(state), (dict(state._state),)


def _reduce_included_router(node: Any) -> Any:
    return _rebuild_included_router, (type(node), node.original_router, node.include_context)


def _rebuild_included_router(cls: type, original_router: Any, include_context: Any) -> Any:
    """An included router as FastAPI makes one: a new lock, empty caches."""
    return cls(original_router=original_router, include_context=include_context)
