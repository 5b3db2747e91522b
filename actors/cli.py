"""The ``mqserve`` command: ``run``, ``status``, ``shutdown``, ``worker``, ``gateway``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import signal
import sys
import threading
import traceback
from typing import Any, Optional

from .config import ConfigError, Settings


class CLIError(Exception):
    """A user mistake: printed as one paragraph, exit status 1."""


def _where(exc: BaseException) -> str:
    """'file, line N' of the innermost frame of user code in ``exc``'s traceback."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}, line {exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "importlib" not in f.filename and os.sep + "actors" + os.sep not in f.filename]
    if frames:
        return f"{frames[-1].filename}, line {frames[-1].lineno}"
    remote = re.findall(r'File "([^"]+)", line (\d+)', getattr(exc, "_mq_remote_traceback", "") or "")
    remote = [(f, n) for f, n in remote if os.sep + "actors" + os.sep not in f and "dramatiq" not in f]
    return f"{remote[-1][0]}, line {remote[-1][1]}" if remote else "unknown location"


def _first_line(exc: BaseException) -> str:
    text = exc.msg if isinstance(exc, SyntaxError) else str(exc).split("\n\nRemote traceback")[0].strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_app(import_path: str) -> Any:
    """The application at ``module:attribute``, imported from the current directory."""
    from .deployment import Application, Deployment

    module_name, sep, attr = import_path.partition(":")
    if not sep or not module_name or not attr:
        raise CLIError(f"'{import_path}' is not an import path: write it as module:attribute, "
                       "for example hello:app.")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise CLIError(f"Could not import '{module_name}': {_first_line(e)}. Run mqserve from the directory "
                       "that holds it, or install it.") from None
    except Exception as e:
        raise CLIError(f"Could not import '{module_name}': {_first_line(e)} ({_where(e)}).") from None
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise CLIError(f"Module '{module_name}' ({module.__file__}) has no attribute '{attr}'.") from None
    if isinstance(target, Deployment):
        target = target.bind()
    if not isinstance(target, Application):
        raise CLIError(f"'{import_path}' is a {type(target).__name__}, not an application: "
                       "bind a deployment to make one, e.g. app = MyDeployment.bind().")
    return target


def _load_config(path: str) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        raise CLIError("Reading a config file needs PyYAML: pip install pyyaml.") from None
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise CLIError(f"Could not read config file {path}: {e}") from None
    apps = config.get("applications") if isinstance(config, dict) else None
    if not isinstance(apps, list) or not apps:
        raise CLIError(f"{path} has no 'applications' list (Ray Serve's config format).")
    for i, app in enumerate(apps):
        if not isinstance(app, dict) or "import_path" not in app:
            raise CLIError(f"{path}: applications[{i}] needs an import_path.")
    return config


def _deploy_all(opts: argparse.Namespace) -> list[tuple[str, Optional[str]]]:
    """Deploy what ``opts.target`` names; returns (app name, route prefix) pairs."""
    from . import serve
    from .context import get_context

    if opts.target.endswith((".yaml", ".yml")):
        config = _load_config(opts.target)
        http = config.get("http_options") or {}
        specs = [(a.get("name", "default"), a.get("route_prefix", "/"), a["import_path"],
                  {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in a.get("deployments", [])})
                 for a in config["applications"]]
    else:
        http = {}
        specs = [(opts.name, opts.route_prefix, opts.target, {})]
    apps = [(name, prefix, load_app(path), overrides) for name, prefix, path, overrides in specs]
    http_options = {"host": opts.host or http.get("host"), "port": opts.port or http.get("port")}
    serve.start(redis_url=opts.redis_url, http_options={k: v for k, v in http_options.items() if v})
    for name, prefix, app, overrides in apps:
        get_context().deploy(app, name, prefix, overrides)
    return [(name, prefix) for name, prefix, _, _ in apps]


def _run(opts: argparse.Namespace) -> int:
    from . import serve
    from .context import current_context

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        try:
            deployed = _deploy_all(opts)
        except CLIError:
            raise
        except Exception as e:
            raise CLIError(f"Deploying {opts.target} failed: {_first_line(e)} ({_where(e)}).") from None
        ctx = current_context()
        base = f"http://{ctx.gateway.host}:{ctx.gateway.port}" if ctx and ctx.gateway else "(no HTTP)"
        for name, prefix in deployed:
            print(f"mqserve: application '{name}' is running at {base}{prefix or ''}", flush=True)
        print("mqserve: press Ctrl-C to stop.", flush=True)
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

    argv = ["--redis-url", opts.redis_url] if opts.redis_url else []
    return node_main(argv + (["--name", opts.name] if opts.name else []))


def _gateway(opts: argparse.Namespace) -> int:
    from gateway.server import main as gateway_main

    argv = ["--redis-url", opts.redis_url] if opts.redis_url else []
    argv += ["--host", opts.host] if opts.host else []
    return gateway_main(argv + (["--port", str(opts.port)] if opts.port else []))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="mqserve", description="Ray Serve's model on Redis and Dramatiq.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="deploy here (module:app or config.yaml) and block until Ctrl-C")
    run.add_argument("target", metavar="IMPORT_PATH_OR_CONFIG",
                     help="module:attribute of a bound application (e.g. hello:app), or a Ray Serve config YAML")
    run.add_argument("--name", default="default")
    run.add_argument("--route-prefix", default="/")
    run.set_defaults(fn=_run)
    status = sub.add_parser("status", help="show applications and replicas")
    status.add_argument("--json", action="store_true")
    status.set_defaults(fn=_status)
    sub.add_parser("shutdown", help="delete every application").set_defaults(fn=_shutdown)
    worker = sub.add_parser("worker", help="run a node that hosts replicas")
    worker.add_argument("--name", default=None)
    worker.set_defaults(fn=_worker)
    gateway = sub.add_parser("gateway", help="run an HTTP gateway")
    gateway.set_defaults(fn=_gateway)
    for p in (run, status, sub.choices["shutdown"], worker, gateway):
        p.add_argument("--redis-url", default=None, help="Redis to use (default: MQSERVE_REDIS_URL)")
    for p in (run, gateway):
        p.add_argument("--host", default=None, help="HTTP host (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=None, help="HTTP port (default: MQSERVE_HTTP_PORT or 8000)")
    opts = parser.parse_args(argv)
    try:
        return int(opts.fn(opts))
    except (CLIError, ConfigError) as e:
        print(f"mqserve: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
