"""The node's timing of a stopping replica (issue 10, replica life)."""

from __future__ import annotations

from actors.config import DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S
from actors.runtime.node import KILL_GRACE_S, kill_after_s


def test_a_replica_is_killed_only_after_its_own_graceful_timeout_above_the_default() -> None:
    # A deployment that lets its requests run 60 s while it drains keeps them: the node
    # waits its 60 s (plus the grace), not the default's 20 s.
    assert kill_after_s({"graceful_shutdown_timeout_s": 60}) == 60 + KILL_GRACE_S
    assert kill_after_s({"graceful_shutdown_timeout_s": 0.5}) == 0.5 + KILL_GRACE_S
    assert kill_after_s({}) == DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S + KILL_GRACE_S
