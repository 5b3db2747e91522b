"""Helpers for the child processes mqserve starts (Redis, nodes, replicas)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1


def child_preexec() -> None:
    """Run in a child before exec: its own session (terminal Ctrl-C goes to the parent
    only, which shuts down in order), and on Linux a SIGTERM when the parent dies, so
    nothing outlives a driver that was killed."""
    os.setsid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass


def on_stdin_eof(callback: Callable[[], None]) -> None:
    """Block until stdin closes, then call ``callback``: a parent that owns us holds our
    stdin open, so EOF means it is gone. Reads the raw descriptor, not ``sys.stdin``,
    whose buffer lock would abort the interpreter at exit."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    callback()


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; always reaps the process."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_all(procs: list[subprocess.Popen[Any]], timeout_s: float = 30.0) -> None:
    """SIGTERM every process at once, then SIGKILL those still running after ``timeout_s``."""
    import time

    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        stop_process(proc, max(0.1, deadline - time.monotonic()))


def setup_logging(level: str, label: str, *, quiet: tuple[str, ...] = ("dramatiq",)) -> None:
    """Log lines of a node, replica or gateway process, labelled with what it is; the
    ``quiet`` loggers (Dramatiq's own) only say more than warnings at DEBUG."""
    for name in quiet:
        logging.getLogger(name).setLevel(level if level == "DEBUG" else "WARNING")
    logging.basicConfig(level=level, format=f"%(asctime)s {label} %(levelname)s %(name)s: %(message)s")
