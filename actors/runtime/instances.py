"""Local instances: how ``mqserve status`` in a second terminal finds a running ``mqserve run``.

A local-mode instance (``mqserve run``, or a driver's ``serve.run``/``serve.start``
without a Redis configured) talks to a private ``redis-server`` on a Unix socket in a
temporary directory nobody else knows of. So that operator commands find it the way
``serve status`` finds a local Ray, each one writes a small JSON record (socket URL,
namespace, pid, start time, command line, HTTP address) into a per-user runtime
directory, and removes it when it stops:

- ``MQSERVE_RUNTIME_DIR`` if set (tests use their own), else ``$XDG_RUNTIME_DIR/mqserve``
  (per-user, cleared at logout), else ``{tmp}/mqserve-{uid}``;
- the directory is created 0700 and used only if it is ours and nobody else may write
  in it: a record names a socket that commands connect to, so a record planted by
  another user must never be read. The socket keeps its own permissions (0700, in its
  own private directory); the record only says where it is.

A record whose process is gone (killed, crashed: nothing removed it) or whose socket is
gone is stale: readers ignore it and remove it.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..config import Settings
from ..exceptions import ServeException


class LocalInstanceError(ServeException):
    """No local instance to talk to, or several and no way to ask which: the message
    says what to pass instead."""


@dataclass(frozen=True)
class Instance:
    """One running local instance, as its record describes it."""

    url: str
    namespace: str
    pid: int
    #: Wall-clock time it started (this machine's clock: the record never leaves it).
    started: float
    #: The command line that started it (``mqserve run hello:app``, ``python train.py``).
    started_by: str
    #: Its HTTP gateway, ``host:port``, if it has one.
    http: str = ""
    #: The record file (not written into it).
    path: str = ""

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        where = f", HTTP on {self.http}" if self.http else ""
        return f"pid {self.pid}, started {when} by `{self.started_by}`{where} ({self.url})"

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        del out["path"]
        return out


def runtime_dir() -> str:
    """The per-user directory of instance records (see the module docstring)."""
    configured = Settings.from_env().runtime_dir
    if configured:
        return configured
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return os.path.join(xdg, "mqserve")
    return os.path.join(tempfile.gettempdir(), f"mqserve-{os.getuid()}")


def _private_dir(create: bool) -> str | None:
    """The runtime directory if it is safe to use (ours, 0700), creating it if asked."""
    path = runtime_dir()
    if create:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError:
            return None
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None  # someone else's, or others may write in it: its records cannot be trusted
    return path


def register(url: str, namespace: str, http: str = "") -> str | None:
    """Write this process's record; returns its path (for :func:`unregister`), or None if
    the runtime directory cannot be used (the instance runs; commands just won't find it)."""
    directory = _private_dir(create=True)
    if directory is None:
        return None
    record = Instance(url=url, namespace=namespace, pid=os.getpid(), started=time.time(),
                      started_by=command_line(), http=http)
    path = os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json")
    tmp = path + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record.to_dict(), f)
        os.replace(tmp, path)  # readers never see half a record
    except OSError:
        return None
    return path


def unregister(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def live() -> list[Instance]:
    """The local instances running now, oldest first; stale records are removed."""
    directory = _private_dir(create=False)
    if directory is None:
        return []
    found = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path) as f:
                instance = Instance(**json.load(f), path=path)
        except (OSError, ValueError, TypeError):
            continue  # being written, or not ours
        if _alive(instance):
            found.append(instance)
        else:
            unregister(path)
    return sorted(found, key=lambda i: i.started)


def _alive(instance: Instance) -> bool:
    try:
        os.kill(instance.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a process of that pid lives (another user's: pid reused)
    socket = instance.url[len("unix://"):] if instance.url.startswith("unix://") else ""
    return not socket or os.path.exists(socket)


def find(*, interactive: bool | None = None, ask: Callable[[str], str] = input) -> Instance:
    """The local instance to talk to: the only one running, or the one the user picks
    when there are several and stdin is a terminal. Raises :class:`LocalInstanceError`
    otherwise, listing what runs and what to pass instead."""
    instances = live()
    hint = "pass --redis-url (or set MQSERVE_REDIS_URL)"
    if not instances:
        raise LocalInstanceError(
            "No Redis to talk to: no local mqserve instance is running (start one with `mqserve run`, or "
            f"serve.run() in a driver), and no cluster is named: {hint}.")
    if len(instances) == 1:
        return instances[0]
    listing = "\n".join(f"  [{n}] {i.describe()}" for n, i in enumerate(instances, 1))
    if interactive is None:
        interactive = sys.stdin.isatty()
    if not interactive:
        raise LocalInstanceError(f"{len(instances)} local mqserve instances are running:\n{listing}\n"
                                 f"Choose one: {hint}, e.g. --redis-url {instances[0].url}")
    print(f"{len(instances)} local mqserve instances are running:\n{listing}", file=sys.stderr)
    answer = ask(f"Which one [1-{len(instances)}]? ").strip()
    if not answer.isdigit() or not 1 <= int(answer) <= len(instances):
        raise LocalInstanceError(f"'{answer}' is not one of 1-{len(instances)}; nothing was done.")
    return instances[int(answer) - 1]


def command_line() -> str:
    """How this process was started, for people: ``mqserve run hello:app``, ``python x.py``."""
    argv = list(sys.argv) or ["python"]
    program = os.path.basename(argv[0])
    if program in ("mqserve", "cli.py"):
        return " ".join(["mqserve", *argv[1:]])
    return " ".join(["python", *argv]) if program.endswith(".py") or program in ("-c", "") else " ".join(argv)


def locate(redis_url: str | None = None) -> tuple[str, str]:
    """The Redis URL and namespace an operator command talks to: ``redis_url`` (from
    ``--redis-url``), else ``MQSERVE_REDIS_URL`` (both in ``MQSERVE_NAMESPACE``), else the
    local instance :func:`find` picks, in its own namespace. Raises
    :class:`LocalInstanceError` when there is none or no way to choose."""
    settings = Settings.from_env()
    url = redis_url or settings.redis_url
    if url:
        return url, settings.namespace
    instance = find()
    return instance.url, instance.namespace
