"""A replica's log, as Ray Serve writes it: the ``ray.serve`` logger (which user code
uses too) and mqserve's own ``mqserve`` loggers go to stderr and to the replica's file.

The deployment's :class:`~actors.config.LoggingConfig` decides the level, the file's
encoding (TEXT or JSON), its directory, and whether requests are logged (access log).
Every line carries the application, deployment and replica; a line logged while a
request runs also carries its user-visible ``request_id`` and ``route`` (read from the
request context, so user code needs nothing to get them).

The file is ``replica_{app}_{deployment}_{replica}.log`` in the logs directory, as Ray
names it. TEXT lines read ``INFO 2025-01-01 12:00:00,000 {app}_{deployment} {replica}
{request_id} -- message``; JSON lines are one object each, with Ray's keys (``asctime``,
``levelname``, ``message``, ``filename``, ``lineno``, ``process``, ``application``,
``deployment``, ``replica``, ``component_name``, ``request_id``, ``route``, ``exc_text``,
and any ``extra`` the caller gave), plus ``app``, the application's name again, as
mqserve's issue 13 asks for.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
import time
from typing import Any

from ..config import LoggingConfig
from ..context import _serve_request_context

#: The logger Ray Serve's docs tell users to log with; a replica writes it to its log.
SERVE_LOGGER_NAME = "ray.serve"
#: mqserve's own loggers (``mqserve.replica``, ...), written to the same log.
OWN_LOGGER_NAME = "mqserve"
#: Set on an access log record (``extra``); such records are dropped when access logs are off.
ACCESS_LOG_ATTR = "serve_access_log"
#: ``extra={"log_to_stderr": False}`` keeps a record out of stderr (file only), as in Ray.
TO_STDERR_ATTR = "log_to_stderr"
#: Bytes of a replica's log file before it is rotated, and the rotated files kept (Ray's defaults).
ROTATE_BYTES = 512 * 1024 * 1024
ROTATE_BACKUPS = 5

#: Attributes every LogRecord has: JSON lines show the others (context and ``extra``).
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
#: Attributes that steer logging and are never written.
_INTERNAL = frozenset({ACCESS_LOG_ATTR, TO_STDERR_ATTR, "skip_context_filter"})


class ReplicaIdentity:
    """What every line of a replica's log says about where it comes from."""

    def __init__(self, app: str, deployment: str, replica: str) -> None:
        self.app, self.replica = app, replica
        #: Ray's ``deployment`` field and TEXT label: ``{app}_{deployment}``.
        self.component = f"{app}_{deployment}" if app else deployment

    @property
    def file_name(self) -> str:
        """Ray's name for the replica's file, with only ``[A-Za-z0-9_.]`` in it."""
        return re.sub(r"[^A-Za-z0-9_.]", "_", f"replica_{self.component}_{self.replica}") + ".log"


class ContextFilter(logging.Filter):
    """Adds the replica's identity, and the running request's id and route, to a record
    (keeping what the caller set in ``extra``). It filters nothing out."""

    def __init__(self, identity: ReplicaIdentity) -> None:
        super().__init__()
        self.identity = identity

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        if "replica" in fields:  # done already (another handler), or set by the caller
            return True
        request = _serve_request_context.get()
        if request is not None:
            if request.route and "route" not in fields:
                fields["route"] = request.route
            if request.request_id and "request_id" not in fields:
                fields["request_id"] = request.request_id
        fields["application"] = fields["app"] = self.identity.app
        fields["deployment"] = self.identity.component
        fields["replica"] = self.identity.replica
        fields["component_name"] = "replica"
        return True


def _not_access_log(record: logging.LogRecord) -> bool:
    return not getattr(record, ACCESS_LOG_ATTR, False)


def _to_stderr(record: logging.LogRecord) -> bool:
    return getattr(record, TO_STDERR_ATTR, None) is not False


class _Formatter(logging.Formatter):
    """A formatter that formats the time of a second once: a replica formats every
    record twice (stderr and file), and an access log line for every request."""

    _second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second, text = self._second
        if second != int(record.created):
            second, text = int(record.created), time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
            self._second = (second, text)  # one tuple: threads may race here, harmlessly
        return f"{text},{int(record.msecs):03d}"


class TextFormatter(_Formatter):
    """Ray Serve's TEXT lines: level, time, component, replica, request id, message."""

    def __init__(self, identity: ReplicaIdentity, extra_attrs: tuple[str, ...] = ()) -> None:
        super().__init__()
        head = f"%(levelname)s %(asctime)s {identity.component} {identity.replica} "
        tail = "".join(f"%({attr})s " for attr in extra_attrs) + "-- %(message)s"
        self._plain = _Formatter(head + tail)
        self._request = _Formatter(head + "%(request_id)s " + tail)

    def format(self, record: logging.LogRecord) -> str:
        formatter = self._request if "request_id" in record.__dict__ else self._plain
        return formatter.format(record)


class JSONFormatter(_Formatter):
    """One JSON object per line: Ray's standard keys, then the record's context and extras."""

    def __init__(self, extra_attrs: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.extra_attrs = extra_attrs

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "asctime": self.formatTime(record), "levelname": record.levelname, "message": record.getMessage(),
            "filename": record.filename, "lineno": record.lineno, "process": record.process,
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc_text"] = record.exc_text
        for attr in self.extra_attrs:
            line[attr] = getattr(record, attr, None)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in _INTERNAL:
                line[key] = value
        return json.dumps(line, default=str)


def configure(config: LoggingConfig, identity: ReplicaIdentity, default_dir: str) -> str | None:
    """Point the ``ray.serve`` and ``mqserve`` loggers at this replica's stderr and file,
    as ``config`` says; returns the file's path (None if it could not be opened: the
    replica then logs to stderr only, and says why)."""
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(TextFormatter(identity, config.additional_log_standard_attrs))
    stream.addFilter(_to_stderr)
    path = os.path.join(config.logs_dir or default_dir, identity.file_name)
    file = _file_handler(config, identity, path)
    handlers: list[logging.Handler] = [stream] if file is None else [stream, file]
    context = ContextFilter(identity)
    for handler in handlers:
        handler.addFilter(context)
        if not config.enable_access_log:
            handler.addFilter(_not_access_log)
    for name in (SERVE_LOGGER_NAME, OWN_LOGGER_NAME):
        logger = logging.getLogger(name)
        for old in logger.handlers[:]:
            logger.removeHandler(old)
            old.close()
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(config.log_level)
        logger.propagate = False
    return None if file is None else path


class _RotatingFile(logging.handlers.RotatingFileHandler):
    """Rotates by the file's position: the stock check formats every record a second
    time and stats the file twice, to decide before each write."""

    def shouldRollover(self, record: logging.LogRecord) -> int:
        return int(self.stream is not None and self.stream.tell() >= self.maxBytes > 0)


def _file_handler(config: LoggingConfig, identity: ReplicaIdentity, path: str) -> logging.Handler | None:
    """The handler of the replica's file: as Ray's, a buffer of one record in front of a
    rotating file (so ``logger.handlers[1].target.baseFilename`` is the file's path)."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        target = _RotatingFile(path, maxBytes=ROTATE_BYTES, backupCount=ROTATE_BACKUPS)
    except OSError as e:
        print(f"mqserve: replica {identity.replica} cannot write its log file {path} ({e}); logging to stderr only",
              file=sys.stderr)
        return None
    target.setFormatter(JSONFormatter(config.additional_log_standard_attrs) if config.encoding == "JSON"
                        else TextFormatter(identity, config.additional_log_standard_attrs))
    return logging.handlers.MemoryHandler(1, flushLevel=logging.ERROR, target=target)
