"""``mqserve queue``: what waits in each deployment's queue, and dropping it.

- ``mqserve queue``: per deployment, queued count, oldest waiting age, in-flight per
  replica, expired and failed counts;
- ``mqserve queue APP DEPLOYMENT --peek N``: the N oldest waiting requests (id, method,
  age, caller, deadline, and arguments only as size and types: user pickles are never
  loaded here, see :mod:`broker.pickled`);
- ``--drop ID`` / ``--purge``: take requests out, after a ``[y/N]`` confirmation (or
  ``--yes``); their callers get ``RequestCancelledError`` at once.

Every form has ``--json``. The Redis and namespace come from ``--redis-url``,
``MQSERVE_REDIS_URL``, or the local instance running here (``instances.locate``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from broker.queues import Depth, Queues, Waiting

from ..config import Settings
from ..exceptions import RequestCancelledError
from .cli import CLIError, table


def add_parser(sub: Any) -> argparse.ArgumentParser:
    queue = sub.add_parser("queue", help="show what waits in each deployment's queue; peek, drop or purge it")
    queue.add_argument("app", metavar="APP", nargs="?", help="application (with DEPLOYMENT: only that one)")
    queue.add_argument("deployment", metavar="DEPLOYMENT", nargs="?")
    action = queue.add_mutually_exclusive_group()
    action.add_argument("--peek", type=int, metavar="N", help="list the N oldest waiting requests")
    action.add_argument("--drop", metavar="ID", help="drop one waiting request; its caller gets RequestCancelledError")
    action.add_argument("--purge", action="store_true", help="drop every waiting request of the deployment")
    queue.add_argument("--yes", "-y", action="store_true", help="drop without asking for confirmation")
    queue.add_argument("--json", action="store_true")
    return queue


def run(opts: argparse.Namespace, queues: Queues, *, ask: Callable[[str], str] = input,
        interactive: bool | None = None) -> int:
    """Carry out ``mqserve queue`` on ``queues`` (the namespace to read)."""
    if opts.app and not opts.deployment:
        raise CLIError(f"Name the deployment too: mqserve queue {opts.app} DEPLOYMENT (mqserve queue lists them).")
    acting = opts.peek is not None or opts.drop or opts.purge
    if acting and not opts.deployment:
        raise CLIError("--peek, --drop and --purge act on one deployment: mqserve queue APP DEPLOYMENT --peek 10.")
    if opts.peek is not None and opts.peek <= 0:
        raise CLIError(f"--peek takes a positive number of requests, not {opts.peek}.")
    targets = _deployments(queues, opts.app, opts.deployment)
    now_ms = queues.now_ms()
    if opts.peek is not None:
        app, dep, replicas = targets[0]
        found = queues.waiting(app, dep, replicas, now_ms, opts.peek)
        _out(opts, {"app": app, "deployment": dep, "redis_time_ms": now_ms,
                    "requests": [w.to_dict() for w in found]},
             lambda: format_peek(found, now_ms) if found else f"No request waits in {app}/{dep}.")
        return 0
    if opts.drop or opts.purge:
        return _drop(opts, queues, *targets[0], ask=ask, interactive=interactive)
    depths = [queues.depth(app, dep, replicas, now_ms) for app, dep, replicas in targets]
    _out(opts, {"redis_time_ms": now_ms, "deployments": [vars(d) for d in depths]},
         lambda: format_depths(depths) if depths else "No applications.")
    return 0


def _deployments(queues: Queues, app: str | None, dep: str | None) -> list[tuple[str, str, list[str]]]:
    """(app, deployment, replica ids) of every deployment, or of the one named."""
    apps = queues.apps()
    if app is not None:
        if app not in apps:
            raise CLIError(f"There is no application named '{app}'; mqserve queue lists them.")
        if dep not in apps[app].get("deployments", []):
            raise CLIError(f"Application '{app}' has no deployment named '{dep}'; it has "
                           f"{', '.join(apps[app].get('deployments', [])) or 'none'}.")
        apps = {app: {**apps[app], "deployments": [dep]}}
    return [(name, d, sorted(queues.replicas(name, d))) for name, rec in sorted(apps.items())
            for d in rec.get("deployments", [])]


def _drop(opts: argparse.Namespace, queues: Queues, app: str, dep: str, replicas: list[str], *,
          ask: Callable[[str], str], interactive: bool | None) -> int:
    ttl_ms = Settings.from_env().result_ttl_ms
    how = "mqserve queue --purge" if opts.purge else "mqserve queue --drop"
    error = RequestCancelledError(f"The request was dropped from the queue of {app}/{dep} by an operator ({how}).")
    if opts.purge:
        count = queues.depth(app, dep, replicas, queues.now_ms()).queued
        if count == 0:
            _out(opts, {"app": app, "deployment": dep, "dropped": 0}, lambda: f"No request waits in {app}/{dep}.")
            return 0
        _confirm(opts, f"Drop all {count} request(s) waiting in {app}/{dep}? Their callers get "
                       "RequestCancelledError.", ask, interactive)
        dropped = queues.purge(app, dep, replicas, ttl_ms, error)
        _out(opts, {"app": app, "deployment": dep, "dropped": dropped},
             lambda: f"Dropped {dropped} request(s) from {app}/{dep}.")
        return 0
    request = queues.find(app, dep, replicas, opts.drop)
    if request is None:
        raise CLIError(f"No request {opts.drop} waits in {app}/{dep}: it may have started or finished "
                       f"(mqserve queue {app} {dep} --peek 10 lists what waits).")
    _confirm(opts, f"Drop request {request.id} ({request.method}, {_args(request)}) from {app}/{dep}? Its caller "
                   "gets RequestCancelledError.", ask, interactive)
    if not queues.drop(app, dep, request, ttl_ms, error):
        raise CLIError(f"Request {request.id} left the queue before it could be dropped (a replica took it, or its "
                       "caller withdrew it); to stop it now, cancel it from its caller.")
    _out(opts, {"app": app, "deployment": dep, "dropped": [request.id]},
         lambda: f"Dropped request {request.id} from {app}/{dep}; its caller gets RequestCancelledError.")
    return 0


def _confirm(opts: argparse.Namespace, question: str, ask: Callable[[str], str], interactive: bool | None) -> None:
    """Ask before dropping anything; without a terminal, only ``--yes`` may drop."""
    if opts.yes:
        return
    if not (sys.stdin.isatty() if interactive is None else interactive):
        raise CLIError("Not dropping anything without confirmation, and stdin is not a terminal to ask on: "
                       "pass --yes to drop without asking.")
    if ask(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise CLIError("Nothing was dropped.")


def _out(opts: argparse.Namespace, data: dict[str, Any], text: Callable[[], str]) -> None:
    print(json.dumps(data, indent=2) if opts.json else text())


def format_depths(depths: list[Depth]) -> str:
    rows = [["APPLICATION", "DEPLOYMENT", "QUEUED", "OLDEST", "IN FLIGHT", "EXPIRED", "FAILED"]]
    for d in depths:
        in_flight = ", ".join(f"{_short(rid)}: {n}" for rid, n in sorted(d.in_flight.items())) or "-"
        rows.append([d.app, d.deployment, str(d.queued), _seconds(d.oldest_age_s), in_flight, str(d.expired),
                     str(d.failed)])
    return "\n".join(table(rows))


def format_peek(found: list[Waiting], now_ms: int) -> str:
    rows = [["ID", "METHOD", "AGE", "CALLER", "DEADLINE", "WHERE", "ARGUMENTS"]]
    for w in found:
        rows.append([w.id, w.method, _seconds(w.age_s), w.caller or "-", _deadline(w.deadline_ms, now_ms),
                     _short(w.where), _args(w)])
    return "\n".join(table(rows))


def _args(w: Waiting) -> str:
    return f"{w.size} B: {', '.join(w.args) or 'no arguments'}"


def _deadline(deadline_ms: int | None, now_ms: int) -> str:
    if deadline_ms is None:
        return "-"
    left = (deadline_ms - now_ms) / 1000
    return f"in {left:.1f} s" if left >= 0 else f"passed {-left:.1f} s ago"


def _seconds(age_s: float | None) -> str:
    return "-" if age_s is None else f"{age_s:.1f} s"


def _short(replica_id: str) -> str:
    """A replica id ``app#dep#xxxxxxxx`` by its last part (the table names app and deployment)."""
    return replica_id.rpartition("#")[2]
