"""The autoscaling decision: how many replicas a deployment should have now.

Ray Serve's replicas push their request counts to its controller, which averages them
over ``look_back_period_s``. Here Redis already holds the exact numbers (the queue's
length plus each replica's processing list), so the controller reads them on every pass
and the delays alone filter out short spikes: a deployment scales up once it has wanted
more replicas for ``upscale_delay_s`` without a break, and down after
``downscale_delay_s``. From zero replicas, the first request scales to one at once, as
in Ray Serve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class ScaleState:
    """What the autoscaler remembers per deployment between passes."""

    target: int
    #: When the load first asked for more (or fewer) replicas than ``target``, if it still does.
    up_since: float | None = None
    down_since: float | None = None


def initial_target(auto: dict[str, Any]) -> int:
    initial = auto.get("initial_replicas")
    return int(initial if initial is not None else auto["min_replicas"])


def desired_replicas(auto: dict[str, Any], requests: int) -> int:
    """Replicas that keep ``target_ongoing_requests`` per replica for ``requests`` queued
    plus running, within [min_replicas, max_replicas]."""
    per_replica = float(auto["target_ongoing_requests"])
    wanted = math.ceil(requests / per_replica) if requests > 0 else 0
    return max(int(auto["min_replicas"]), min(int(auto["max_replicas"]), wanted))


def decide(auto: dict[str, Any], state: ScaleState, requests: int, now: float) -> ScaleState:
    """The next state, given the requests queued or running now.

    Upscaling uses ``upscaling_factor`` and downscaling ``downscaling_factor`` (both 1 by
    default) to move only part of the way, as Ray's smoothing does.
    """
    desired = desired_replicas(auto, requests)
    current = state.target
    if current == 0 and requests > 0:
        return ScaleState(max(1, desired))  # a request is waiting: start a replica now
    if desired > current:
        since = state.up_since if state.up_since is not None else now
        if now - since >= float(auto["upscale_delay_s"]):
            factor = float(auto.get("upscaling_factor") or 1.0)
            return ScaleState(min(desired, current + max(1, math.ceil((desired - current) * factor))))
        return ScaleState(current, up_since=since)
    if desired < current:
        since = state.down_since if state.down_since is not None else now
        delay = float(auto["downscale_delay_s"])
        if desired == 0 and current == 1 and auto.get("downscale_to_zero_delay_s") is not None:
            delay = float(auto["downscale_to_zero_delay_s"])
        if now - since >= delay:
            factor = float(auto.get("downscaling_factor") or 1.0)
            return ScaleState(max(desired, current - max(1, math.ceil((current - desired) * factor))))
        return ScaleState(current, down_since=since)
    return ScaleState(current)
