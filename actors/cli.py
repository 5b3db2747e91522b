"""The ``mqserve`` command: ``run``, ``status``, ``shutdown``, ``worker``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import threading
from typing import Any, Optional

from .config import Settings


class CLIError(Exception):
    """A user mistake on the command line; printed as one paragraph, exit status 1."""


def _load_app(import_path: str) -> Any:
    from .deployment import Application, Deployment

    module_name, sep, attr = import_path.partition(":")
    if not sep or not module_name or not attr:
        raise CLIError(f"'{import_path}' is not an import path; write it as module:attribute (e.g. hello:app).")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise CLIError(f"Could not import module '{module_name}': {type(e).__name__}: {e}") from e
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise CLIError(f"Module '{module_name}' has no attribute '{attr}'.") from None
    if isinstance(target, Deployment):
        target = target.bind()
    if not isinstance(target, Application):
        raise CLIError(f"'{import_path}' is a {type(target).__name__}, not an application; "
                       "bind a deployment with .bind() to make one.")
    return target


def _run(opts: argparse.Namespace) -> int:
    from . import serve

    app = _load_app(opts.import_path)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(redis_url=opts.redis_url)
        serve.run(app, name=opts.name, route_prefix=opts.route_prefix)
        print(f"mqserve: application '{opts.name}' is running ({opts.import_path}). Press Ctrl-C to stop.",
              flush=True)
        stop.wait()
    finally:
        serve.shutdown()
    return 0


def _registry(opts: argparse.Namespace) -> Any:
    from broker.connection import connect
    from broker.keys import Keys
    from broker.registry import Registry

    url = opts.redis_url or Settings.from_env().redis_url
    if not url:
        raise CLIError("No Redis to talk to: pass --redis-url or set MQSERVE_REDIS_URL.")
    return Registry(connect(url), Keys(Settings.from_env().namespace))


def _status(opts: argparse.Namespace) -> int:
    from .status import collect_status

    status = collect_status(_registry(opts))
    if opts.json:
        print(json.dumps(status.to_dict(), indent=2))
        return 0
    if not status.applications:
        print("No applications.")
    for name, app in status.applications.items():
        print(f"{name}  {app.status}  route_prefix={app.route_prefix}  ingress={app.ingress}")
        for dep_name, dep in app.deployments.items():
            states = ", ".join(f"{k}={v}" for k, v in dep.replica_states.items()) or "no replicas"
            print(f"  {dep_name}  {dep.status}  replicas: {states}  queued={dep.queued_requests} "
                  f"ongoing={dep.ongoing_requests}")
        if app.message:
            print(f"  {app.message}")
    return 0


def _shutdown(opts: argparse.Namespace) -> int:
    registry = _registry(opts)
    for name in registry.apps():
        registry.delete_app(name, Settings.from_env().result_ttl_ms)
        print(f"deleted application '{name}'")
    return 0


def _worker(opts: argparse.Namespace) -> int:
    from .node import main as node_main

    argv = []
    if opts.redis_url:
        argv += ["--redis-url", opts.redis_url]
    if opts.name:
        argv += ["--name", opts.name]
    return node_main(argv)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="mqserve", description="Ray Serve's model on Redis and Dramatiq.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="deploy an application here and block until Ctrl-C")
    run.add_argument("import_path", help="module:attribute of a bound application, e.g. hello:app")
    run.add_argument("--name", default="default")
    run.add_argument("--route-prefix", default="/")
    run.add_argument("--redis-url", default=None)
    run.set_defaults(fn=_run)
    for name, fn, text in (("status", _status, "show applications and replicas"),
                           ("shutdown", _shutdown, "delete every application")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--redis-url", default=None)
        if name == "status":
            p.add_argument("--json", action="store_true")
        p.set_defaults(fn=fn)
    worker = sub.add_parser("worker", help="run a node that hosts replicas")
    worker.add_argument("--redis-url", default=None)
    worker.add_argument("--name", default=None)
    worker.set_defaults(fn=_worker)
    opts = parser.parse_args(argv)
    try:
        return int(opts.fn(opts))
    except CLIError as e:
        print(f"mqserve: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
