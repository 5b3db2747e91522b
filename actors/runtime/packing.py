"""A deployment packed for its replicas: its code and bound arguments, by cloudpickle.

``serve.run`` packs every deployment before it registers anything, so a deployment that
cannot travel (it holds a lock, a socket, an open file) fails there, naming the
deployment and what in it cannot be pickled, not later in a replica.
"""

from __future__ import annotations

import inspect
import os
import sys
import sysconfig
from collections.abc import Iterator
from typing import Any

import cloudpickle

from broker import codec

from ..deployment import DeploymentPlan
from ..exceptions import UnpicklableDeploymentError
from ..multiplex import uses_multiplexing


def registry_fields(plan: DeploymentPlan, version: str) -> dict[str, Any]:
    """The deployment's fields in the registry: its packed code, config and version.

    Raises:
        UnpicklableDeploymentError: the class or a bound argument cannot be pickled.
    """
    sources = _sources(_pickle_user_code_by_value(plan.func_or_class))
    try:
        spec = codec.seal(codec.dumps((plan.func_or_class, plan.init_args, plan.init_kwargs, sources)))
    except Exception as e:
        raise _unpicklable(plan, e) from e
    fields = {"spec": spec, "config": plan.config.to_json(), "version": version,
              "max_queued": plan.config.max_queued_requests}
    if uses_multiplexing(plan.func_or_class):
        fields["mux"] = 1  # enqueue.lua routes its requests by model (broker/mux.py)
    return fields


def _unpicklable(plan: DeploymentPlan, error: Exception) -> UnpicklableDeploymentError:
    """Say which part of the deployment cannot be pickled, and what to do instead.
    Only on failure: each part is pickled again on its own to find the culprit."""
    what, advice = "its class or its bound arguments", "instead of keeping them in the deployment"
    try:
        codec.dumps(plan.func_or_class)
    except Exception as e:
        what, advice, error = ("its class (a class attribute, or a global its code uses)",
                               "instead of at class or module level", e)
    else:
        for label, value in _arguments(plan):
            try:
                codec.dumps(value)
            except Exception as e:
                what, advice, error = f"its bound argument {label}", "instead of passing them to .bind()", e
                break
    return UnpicklableDeploymentError(
        f"Deployment '{plan.name}' cannot be sent to its replicas: {what} cannot be pickled "
        f"({type(error).__name__}: {error}). Locks, sockets, open files and connections cannot travel "
        f"between processes: create them in the deployment's __init__ {advice}.")


def _arguments(plan: DeploymentPlan) -> Iterator[tuple[str, Any]]:
    """The bound arguments, labelled by parameter name where the signature tells it."""
    try:
        bound = inspect.signature(plan.func_or_class).bind_partial(*plan.init_args, **plan.init_kwargs)
    except (TypeError, ValueError):
        yield from ((f"#{i}", value) for i, value in enumerate(plan.init_args))
        yield from ((f"'{key}'", value) for key, value in plan.init_kwargs.items())
        return
    yield from ((f"'{key}'", value) for key, value in bound.arguments.items())


_LIBRARY_DIRS = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")})
_OWN_PACKAGES = ("actors", "broker", "gateway")


def _pickle_user_code_by_value(obj: Any) -> list[str]:
    """Ship the user's own code inside the pickle, so workers need neither its files nor
    to import (and re-run) it: the module that defines ``obj``, and every module loaded
    from the same source tree (its local helpers). Returns the files of the code that
    travels by value (``__main__``'s included, which cloudpickle always ships).

    Installed packages stay by reference: workers have them installed.
    """
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    if module is None:
        return []
    if module.__name__ == "__main__":
        main_file = getattr(module, "__file__", None)
        return [os.path.abspath(main_file)] if main_file else []
    path = _user_source(module)
    if path is None:
        return []
    root = _import_root(path)
    files = []
    for other in list(sys.modules.values()):
        other_path = _user_source(other) if other is not None else None
        if other_path is not None and (other is module or other_path.startswith(root + os.sep)):
            try:
                cloudpickle.register_pickle_by_value(other)
            except ValueError:
                continue
            files.append(other_path)
    return files


def _sources(files: list[str]) -> dict[str, str]:
    """The text of code shipped by value, keyed by file name: a worker without those
    files still shows their lines in tracebacks (see ``replica.remember_sources``)."""
    sources = {}
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                sources[path] = f.read()
        except (OSError, UnicodeDecodeError):
            continue
    return sources


def _user_source(module: Any) -> str | None:
    """The file of a module written by the user (not installed, not mqserve's), or None."""
    name = getattr(module, "__name__", "") or ""
    path = getattr(module, "__file__", None)
    if not path or name == "__main__" or name.split(".")[0] in _OWN_PACKAGES:
        return None
    path = os.path.abspath(path)
    return None if path.startswith(_LIBRARY_DIRS) else path


def _import_root(path: str) -> str:
    """The ``sys.path`` entry that ``path`` was imported from (the longest that holds it)."""
    roots = [os.path.abspath(p or os.getcwd()) for p in sys.path]
    holding = [r for r in roots if path.startswith(r + os.sep)]
    return max(holding, key=len) if holding else os.path.dirname(path)
