"""Finding processes by a marker in their command line, to prove none is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable


def processes_with(marker: str) -> list[int]:
    """PIDs of live processes whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != b"Z":
            found.append(int(entry))
    return found


def wait_until_gone(marker: str, timeout_s: float = 30.0) -> list[int]:
    """Poll (with a deadline) until no process carries ``marker``; returns what is left."""
    deadline = time.monotonic() + timeout_s
    left = processes_with(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = processes_with(marker)
    return left


def kill_all(marker: str, procs: Iterable[subprocess.Popen] = ()) -> None:
    """Teardown: kill what a test started, and anything that still carries its marker."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for pid in processes_with(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
