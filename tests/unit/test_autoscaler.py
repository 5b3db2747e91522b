"""The autoscaling decision, on its own (Ray Serve's fields and defaults)."""

from __future__ import annotations

import pytest

from actors.config import ConfigError, DeploymentConfig
from actors.runtime.autoscaler import ScaleState, decide, desired_replicas, initial_target


def auto(**over):
    return DeploymentConfig(autoscaling_config={"min_replicas": 1, "max_replicas": 10, **over}).autoscaling_config


def test_ray_defaults_and_auto_num_replicas() -> None:
    config = DeploymentConfig(num_replicas="auto").autoscaling_config
    assert config["target_ongoing_requests"] == 2 and config["upscale_delay_s"] == 30
    assert config["downscale_delay_s"] == 600 and config["min_replicas"] == 1 and config["max_replicas"] == 100
    assert DeploymentConfig(autoscaling_config={"min_replicas": 0, "max_replicas": 3}).target_replicas == 0
    assert initial_target(auto(initial_replicas=4)) == 4
    with pytest.raises(ConfigError, match="initial_replicas"):
        DeploymentConfig(autoscaling_config={"min_replicas": 2, "max_replicas": 3, "initial_replicas": 5})


def test_desired_replicas_keeps_target_ongoing_per_replica_within_bounds() -> None:
    a = auto(target_ongoing_requests=2, max_replicas=4)
    assert [desired_replicas(a, n) for n in (0, 1, 2, 3, 8, 9, 100)] == [1, 1, 1, 2, 4, 4, 4]
    assert desired_replicas(auto(min_replicas=0), 0) == 0


def test_upscale_waits_for_the_delay_without_a_break() -> None:
    a = auto(upscale_delay_s=30, target_ongoing_requests=1)
    s = decide(a, ScaleState(1), requests=5, now=100.0)
    assert s.target == 1 and s.up_since == 100.0
    s = decide(a, s, requests=5, now=120.0)
    assert s.target == 1
    calm = decide(a, s, requests=1, now=125.0)  # the load dropped: the timer restarts
    assert calm.up_since is None
    s = decide(a, calm, requests=5, now=126.0)
    assert decide(a, s, requests=5, now=150.0).target == 1
    assert decide(a, s, requests=5, now=156.0).target == 5


def test_downscale_uses_its_own_delay_and_zero_delay() -> None:
    a = auto(min_replicas=0, downscale_delay_s=600, downscale_to_zero_delay_s=5, target_ongoing_requests=1)
    s = decide(a, ScaleState(3), requests=1, now=0.0)
    assert s.target == 3 and s.down_since == 0.0
    assert decide(a, s, requests=1, now=599.0).target == 3
    one = decide(a, s, requests=1, now=600.0)
    assert one.target == 1
    s = decide(a, one, requests=0, now=1000.0)
    assert decide(a, s, requests=0, now=1005.0).target == 0  # 1 -> 0 after downscale_to_zero_delay_s


def test_first_request_at_zero_scales_up_at_once() -> None:
    a = auto(min_replicas=0, upscale_delay_s=30, target_ongoing_requests=2)
    assert decide(a, ScaleState(0), requests=0, now=0.0).target == 0
    assert decide(a, ScaleState(0), requests=1, now=0.0).target == 1
    assert decide(a, ScaleState(0), requests=7, now=0.0).target == 4


def test_smoothing_factors_move_part_of_the_way() -> None:
    a = auto(upscale_delay_s=0, downscale_delay_s=0, upscaling_factor=0.5, downscaling_factor=0.5,
             target_ongoing_requests=1)
    assert decide(a, ScaleState(2), requests=10, now=0.0).target == 6
    assert decide(a, ScaleState(10), requests=2, now=0.0).target == 6
