"""The ``mqserve`` command: ``run``, ``deploy``, ``status``, ``delete``, ``shutdown``,
``queue`` (in ``queue_cmd``), ``requests`` (in ``requests_cmd``), ``worker``, ``gateway``.

Operator commands (``status``, ``delete``, ``shutdown``, ``queue``, ``requests``) reach
Redis through :func:`registry_for`: ``--redis-url``, ``MQSERVE_REDIS_URL``, or the local
instance running on this machine."""

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
from typing import Any, TypeVar

from broker import codec
from broker.registry import Registry

from ..config import ConfigError, LoggingConfig, Settings, check_route_prefix
from ..exceptions import ServeException, deleted_error


class CLIError(ServeException):
    """A user mistake: printed as one paragraph, exit status 1."""


R = TypeVar("R", bound=Registry)


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


def _at(exc: BaseException) -> str:
    """`` (file, line N)`` for errors raised in user code; mqserve's own errors say enough."""
    from ..exceptions import ServeException

    where = _where(exc)
    return "" if isinstance(exc, ServeException) or where == "unknown location" else f" ({where})"


def _first_line(exc: BaseException) -> str:
    text = exc.msg if isinstance(exc, SyntaxError) else str(exc).split("\n\nRemote traceback")[0].strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_app(import_path: str) -> Any:
    """The application at ``module:attribute``, imported from the current directory."""
    from ..deployment import Application, Deployment

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


def _deploy_all(opts: argparse.Namespace, progress: Any = None) -> list[tuple[str, str | None]]:
    """Deploy what ``opts.target`` names; returns (app name, route prefix) pairs. Any
    failure becomes a :class:`CLIError` naming its cause (and where, in user code)."""
    try:
        return _deploy_targets(opts, progress)
    except CLIError:
        raise
    except Exception as e:
        raise CLIError(f"Deploying {opts.target} failed: {_first_line(e)}{_at(e)}.") from None


def _deploy_targets(opts: argparse.Namespace, progress: Any) -> list[tuple[str, str | None]]:
    from .. import serve
    from .context import get_context

    if opts.target.endswith((".yaml", ".yml")):
        config = _load_config(opts.target)
        http = config.get("http_options") or {}
        specs = [(a.get("name", "default"), a.get("route_prefix", "/"), a["import_path"],
                  {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in a.get("deployments", [])},
                  LoggingConfig.parse(a.get("logging_config")))
                 for a in config["applications"]]
    else:
        http = {}
        specs = [(opts.name, opts.route_prefix, opts.target, {}, None)]
    for _, prefix, *_ in specs:
        check_route_prefix(prefix)
    apps = [(name, prefix, load_app(path), overrides, logs) for name, prefix, path, overrides, logs in specs]
    http_options = {"host": opts.host or http.get("host"), "port": opts.port or http.get("port"),
                    "request_timeout_s": http.get("request_timeout_s")}
    serve.start(redis_url=opts.redis_url, http_options={k: v for k, v in http_options.items() if v})
    for name, prefix, app, overrides, logs in apps:
        get_context().deploy(app, name, prefix, overrides, progress=progress, logging_config=logs)
    return [(name, prefix) for name, prefix, *_ in apps]


def _run(opts: argparse.Namespace) -> int:
    from .. import serve
    from .context import current_context

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        deployed = _deploy_all(opts)
        ctx = current_context()
        bases = [f"http://{ctx.gateway.host}:{ctx.gateway.port}"] if ctx and ctx.gateway else \
            _gateway_urls(ctx.registry) if ctx else []
        for name, prefix in deployed:
            where = " and ".join(f"{base}{prefix or ''}" for base in bases) or "(no gateway is running)"
            print(f"mqserve: application '{name}' is running at {where}", flush=True)
        print("mqserve: press Ctrl-C to stop.", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
    return 0


def _deploy(opts: argparse.Namespace) -> int:
    """Register the app(s) on a cluster and return once they serve; they outlive us."""
    from .context import current_context, shutdown_context

    if not (opts.redis_url or Settings.from_env().redis_url):
        raise CLIError("mqserve deploy needs a cluster: pass --redis-url or set MQSERVE_REDIS_URL "
                       "(to run an app on this machine alone, use mqserve run).")
    opts.host = opts.port = None
    try:
        deployed = _deploy_all(opts, progress=lambda line: print(f"mqserve: {line}", flush=True))
        ctx = current_context()
        bases = _gateway_urls(ctx.registry) if ctx else []
        for name, prefix in deployed:
            where = " and ".join(f"{base}{prefix or ''}" for base in bases) or "the cluster's gateways"
            print(f"mqserve: application '{name}' is serving at {where}", flush=True)
    finally:
        shutdown_context(keep_cluster_apps=True)  # deployed apps stay when we exit
    return 0


def _gateway_urls(registry: Any) -> list[str]:
    out = []
    for rec in registry.gateways().values():
        host = rec.get("host") or rec.get("hostname")
        if host in ("0.0.0.0", "::", ""):
            host = rec.get("hostname") or "localhost"
        out.append(f"http://{host}:{rec.get('port')}")
    return sorted(out)


def registry_for(opts: argparse.Namespace, kind: type[R]) -> R:
    """The registry (or a subclass: ``broker.queues.Queues``) of the namespace an operator
    command talks to: ``--redis-url``, ``MQSERVE_REDIS_URL``, or the local instance
    running on this machine (``instances.locate``; several: the user picks one)."""
    from broker.connection import connect
    from broker.keys import Keys

    from .instances import locate

    url, namespace = locate(opts.redis_url)
    return kind(connect(url), Keys(namespace))


def _status(opts: argparse.Namespace) -> int:
    from ..status import collect_status

    status = collect_status(registry_for(opts, Registry))
    if opts.json:
        print(json.dumps(status.to_dict(), indent=2))
        return 0
    print(format_status(status))
    return 0


def format_status(status: Any) -> str:
    """``mqserve status`` as a readable table."""
    rows: list[list[str]] = [["APPLICATION", "STATUS", "ROUTE", "DEPLOYMENT", "STATUS", "REPLICAS", "QUEUED",
                              "ONGOING", "PER WORKER"]]
    messages = []
    for name, app in status.applications.items():
        first = True
        for dep_name, dep in app.deployments.items():
            running = dep.replica_states.get("RUNNING", 0)
            others = ", ".join(f"{k.lower()} {v}" for k, v in dep.replica_states.items() if k != "RUNNING")
            replicas = f"{running}/{dep.target_replicas}" + (f" ({others})" if others else "")
            per_worker = ", ".join(f"{w}: {n}" for w, n in sorted(dep.replicas_per_worker.items())) or "-"
            rows.append([name if first else "", app.status if first else "", str(app.route_prefix) if first else "",
                         dep_name, dep.status, replicas, str(dep.queued_requests), str(dep.ongoing_requests),
                         per_worker])
            first = False
        if app.message:
            messages.append(f"{name}: {app.message}")
    lines = (table(rows) if len(rows) > 1 else ["No applications."]) + _modelstable(status)
    workers = [["WORKER", "HOST", "PID", "REPLICAS", "LAST SEEN"]]
    for wid, rec in sorted(status.workers.items()):
        cap = rec.get("max_replicas")
        mark = " (controller)" if wid == status.controller else ""
        workers.append([wid + mark, str(rec.get("host", "")), str(rec.get("pid", "")),
                        f"{rec.get('replicas', 0)}" + (f"/{cap}" if cap is not None else ""),
                        _last_seen(rec.get("heartbeat_age_s"))])
    lines += [""] + (table(workers) if len(workers) > 1 else ["No workers."])
    gateways = [["GATEWAY", "ADDRESS", "PID"]]
    for gid, rec in sorted(status.gateways.items()):
        mark = " (controller)" if gid == status.controller else ""
        gateways.append([gid + mark, f"{rec.get('host')}:{rec.get('port')}", str(rec.get("pid", ""))])
    lines += [""] + (table(gateways) if len(gateways) > 1 else ["No gateways."])
    return "\n".join(lines + ([""] + messages if messages else []))


def _modelstable(status: Any) -> list[str]:
    """The models each replica of a multiplexed deployment holds, if any does."""
    rows = [["DEPLOYMENT", "REPLICA", "MULTIPLEXED MODELS"]]
    for name, app in status.applications.items():
        for dep_name, dep in app.deployments.items():
            for rid, models in sorted(dep.multiplexed_model_ids.items()):
                rows.append([f"{name}/{dep_name}", rid, ", ".join(models)])
    return [""] + table(rows) if len(rows) > 1 else []


def table(rows: list[list[str]]) -> list[str]:
    """Rows as aligned columns (the first row is the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _delete(opts: argparse.Namespace) -> int:
    registry = registry_for(opts, Registry)
    if registry.app(opts.app_name) is None:
        raise CLIError(f"There is no application named '{opts.app_name}'; mqserve status lists them.")
    failed = registry.delete_app(opts.app_name, Settings.from_env().result_ttl_ms, deleted_error(opts.app_name))
    if opts.json:
        print(json.dumps({"deleted": [opts.app_name], "failed_requests": failed}, indent=2))
    else:
        print(f"deleted application '{opts.app_name}'" + (f" ({failed} queued request(s) failed)" if failed else ""))
    return 0


def _shutdown(opts: argparse.Namespace) -> int:
    registry = registry_for(opts, Registry)
    failed = {name: registry.delete_app(name, Settings.from_env().result_ttl_ms, deleted_error(name))
              for name in registry.apps()}
    if opts.json:
        print(json.dumps({"deleted": list(failed), "failed_requests": sum(failed.values())}, indent=2))
    for name in failed if not opts.json else ():
        print(f"deleted application '{name}'")
    return 0


def _worker(opts: argparse.Namespace) -> int:
    from .node import main as node_main

    argv = ["--redis-url", opts.redis_url] if opts.redis_url else []
    argv += ["--max-replicas", str(opts.max_replicas)] if opts.max_replicas is not None else []
    return node_main(argv + (["--name", opts.name] if opts.name else []))


def _gateway(opts: argparse.Namespace) -> int:
    from gateway.server import main as gateway_main

    argv = ["--redis-url", opts.redis_url] if opts.redis_url else []
    argv += ["--host", opts.host] if opts.host else []
    return gateway_main(argv + (["--port", str(opts.port)] if opts.port else []))


def _last_seen(age_s: float | None) -> str:
    return "gone (no heartbeat)" if age_s is None else f"{age_s:.0f} s ago"


def main(argv: list[str] | None = None) -> int:
    from broker.queues import Queues

    from . import queue_cmd, requests_cmd  # they import this module: not at its top
    from .instances import LocalInstanceError

    parser = argparse.ArgumentParser(prog="mqserve", description="Ray Serve's model on Redis and Dramatiq.")
    sub = parser.add_subparsers(dest="command", required=True)
    target_help = "module:attribute of a bound application (e.g. hello:app), or a Ray Serve config YAML"
    run = sub.add_parser("run", help="deploy (here, or on the cluster with --redis-url) and block until Ctrl-C")
    deploy = sub.add_parser("deploy", help="deploy onto a cluster's workers and return once it serves")
    for p in (run, deploy):
        p.add_argument("target", metavar="IMPORT_PATH_OR_CONFIG", help=target_help)
        p.add_argument("--name", default="default", help="application name (default: default)")
        p.add_argument("--route-prefix", default="/")
    run.set_defaults(fn=_run)
    deploy.set_defaults(fn=_deploy)
    status = sub.add_parser("status", help="show applications, replicas, workers and gateways")
    status.add_argument("--json", action="store_true")
    status.set_defaults(fn=_status)
    delete = sub.add_parser("delete", help="delete one application")
    delete.add_argument("app_name", metavar="NAME")
    delete.set_defaults(fn=_delete)
    shutdown = sub.add_parser("shutdown", help="delete every application (workers keep running)")
    shutdown.set_defaults(fn=_shutdown)
    for p in (delete, shutdown):
        p.add_argument("--json", action="store_true")
    queue = queue_cmd.add_parser(sub)
    queue.set_defaults(fn=lambda opts: queue_cmd.run(opts, registry_for(opts, Queues)))
    requests = requests_cmd.add_parser(sub)
    requests.set_defaults(fn=lambda opts: requests_cmd.run(opts, registry_for(opts, Registry)))
    worker = sub.add_parser("worker", help="run a node that hosts replicas")
    worker.add_argument("--name", default=None, help="worker id (default: host name and a random suffix)")
    worker.add_argument("--max-replicas", type=int, default=None, help="most replicas hosted here (default: no limit)")
    worker.set_defaults(fn=_worker)
    gateway = sub.add_parser("gateway", help="run an HTTP gateway")
    gateway.set_defaults(fn=_gateway)
    for p in (run, deploy, status, delete, shutdown, queue, requests, worker, gateway):
        p.add_argument("--redis-url", default=None, help="Redis to use (default: MQSERVE_REDIS_URL)")
    for p in (run, gateway):
        p.add_argument("--host", default=None, help="HTTP host (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=None, help="HTTP port (default: MQSERVE_HTTP_PORT or 8000)")
    opts = parser.parse_args(argv)
    try:
        codec.use_secret(Settings.from_env().secret)  # what it reads or writes is sealed with it
        return int(opts.fn(opts))
    except (CLIError, ConfigError, LocalInstanceError) as e:
        print(f"mqserve: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

