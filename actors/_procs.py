"""Helpers for the child processes mqserve starts (Redis, nodes, replicas)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Callable

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
