"""``mqserve requests``: background requests, from their status records.

- ``mqserve requests ID``: one request's status, app, deployment, method, times (Redis's
  clock), attempts, and for a failure its error's type and first line;
- ``mqserve requests --failed``: those that failed and have not expired.

Both have ``--json``. Only the records' plain fields are read: no result or argument is
unpickled here. The Redis and namespace come from ``--redis-url``, ``MQSERVE_REDIS_URL``,
or the local instance running here (``cli.registry_for``).
"""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

from broker import background
from broker.registry import Registry

from .cli import CLIError, table


def add_parser(sub: Any) -> argparse.ArgumentParser:
    requests = sub.add_parser("requests", help="show a background request's status, or those that failed")
    requests.add_argument("request_id", metavar="ID", nargs="?", help="a background request's id")
    requests.add_argument("--failed", action="store_true", help="list background requests that failed")
    requests.add_argument("--json", action="store_true")
    return requests


def run(opts: argparse.Namespace, registry: Registry) -> int:
    """``mqserve requests ID`` (one background request's status record) and ``mqserve
    requests --failed`` (those that failed and have not expired). Only the records'
    plain fields are read: no result or argument is unpickled here."""
    if opts.failed == bool(opts.request_id):
        raise CLIError("Give a request id (mqserve requests ID) or --failed, not both.")
    if opts.request_id:
        record = background.record(registry.redis, registry.keys, opts.request_id)
        if record is None:
            raise CLIError(f"No background request '{opts.request_id}': unknown, or expired "
                           "(MQSERVE_BACKGROUND_TTL_S after it ended).")
        print(json.dumps({"id": opts.request_id, **record}, indent=2) if opts.json
              else format_request(opts.request_id, record))
        return 0
    failed = background.failed(registry.redis, registry.keys)
    if opts.json:
        print(json.dumps([{"id": req_id, **record} for req_id, record in failed], indent=2))
        return 0
    rows = [["REQUEST", "APPLICATION", "DEPLOYMENT", "METHOD", "ENDED", "ATTEMPTS", "ERROR"]]
    for req_id, rec in failed:
        rows.append([req_id, rec.get("app", ""), rec.get("deployment", ""), rec.get("method", ""),
                     _when(rec.get("ended")), rec.get("attempts", ""), _error(rec)])
    print("\n".join(table(rows)) if len(rows) > 1 else "No failed background requests.")
    return 0


def format_request(req_id: str, record: dict[str, str]) -> str:
    """One background request's record, one field a line."""
    lines = [("request", req_id), ("status", record.get("status", "")),
             ("application", record.get("app", "")), ("deployment", record.get("deployment", "")),
             ("method", record.get("method", "")), ("attempts", record.get("attempts", "")),
             ("created", _when(record.get("created"))), ("started", _when(record.get("started"))),
             ("ended", _when(record.get("ended")))]
    if record.get("error_type"):
        lines.append(("error", _error(record)))
    return "\n".join(f"{name + ':':<13}{value}" for name, value in lines)


def _when(ms: str | None) -> str:
    """A record's time (Redis's clock, ms) in UTC, or '-'."""
    if not ms:
        return "-"
    return datetime.datetime.fromtimestamp(int(ms) / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _error(record: dict[str, str]) -> str:
    kind = record.get("error_type", "").rsplit(".", 1)[-1]
    return f"{kind}: {record.get('error', '')}" if record.get("error") else kind
