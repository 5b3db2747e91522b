"""The dashboard's figures: the replica's tally (``actors.runtime.stats``), their Redis
layout (``broker.stats``, on fakeredis), the gateway's merge (``gateway.dashboard``) and
Ray's metric names (``gateway.metrics``)."""

from __future__ import annotations

import random
from concurrent.futures import Future

import fakeredis
import pytest

from actors.config import ConfigError, Settings
from actors.exceptions import RequestCancelledError
from actors.runtime.stats import RequestStats, StatsFlusher
from broker import codec, stats
from broker.keys import Keys
from gateway.dashboard import HOLD_SAMPLE_S, figures
from gateway.metrics import DeploymentFigures, Metrics

KEYS = Keys("t")


def window(*latencies_ms: float, errors: int = 0) -> stats.Window:
    w = stats.Window(len(latencies_ms), errors, int(sum(latencies_ms) * 1000))
    for ms in latencies_ms:
        b = stats.bucket_of(ms)
        w.buckets[b] = w.buckets.get(b, 0) + 1
    return w


def test_quantiles_from_the_histogram_are_within_ten_percent() -> None:
    rng = random.Random(7)
    values = sorted(rng.lognormvariate(1.5, 1.0) for _ in range(20000))
    w = window(*values)
    for q in (0.5, 0.9, 0.99):
        exact = values[int(q * len(values))]
        assert w.quantile(q) == pytest.approx(exact, rel=0.1)
    assert stats.Window().quantile(0.5) is None
    assert window(10_000_000).quantile(0.99) == stats.BOUNDS_MS[-1]  # beyond the last bound


def test_the_tally_counts_requests_errors_and_not_cancellations() -> None:
    tally = RequestStats("app", "Model", "app#Model#r1")
    tally.observe(0.002, codec.encode_value("ok"))
    tally.observe(0.004, codec.encode_error(ValueError("bad input\nwith a second line")), "req-1")
    tally.observe(0.001, codec.encode_error(RequestCancelledError("the caller left")))
    done: Future[bytes] = Future()
    tally.watch(done, 0.0, "req-2")  # counted when it resolves
    assert tally.take()[0].count == 3
    done.set_result(codec.encode_value(1))
    w, failures = tally.take()
    assert (w.count, w.errors) == (1, 0)
    tally.observe(0.004, codec.encode_error(ValueError("bad input\nwith a second line")), "req-1")
    w, failures = tally.take()
    assert w.errors == 1 and len(failures) == 1
    f = failures[0]
    assert (f.type, f.message, f.request_id, f.deployment) == ("ValueError", "bad input", "req-1", "Model")
    assert tally.take()[0].count == 0  # taken: counting starts again


def test_a_second_of_figures_goes_to_the_stream_the_totals_and_the_error_list() -> None:
    client = fakeredis.FakeRedis()
    now_ms = int(client.time()[0]) * 1000
    failures = [stats.Failure(now_ms / 1000, "app", "Model", "r1", "ValueError", f"bad {i}") for i in range(25)]
    stats.write(client, KEYS, "app", "Model", "r1", window(1, 2, 3, errors=1), failures, now_ms)
    stats.write(client, KEYS, "app", "Model", "r2", window(5), [], now_ms)
    stats.sample_load(client, KEYS, {("app", "Model"): (4, 2)}, now_ms)
    reading = stats.read(client, KEYS, [("app", "Model"), ("app", "Other")])
    entries = reading.entries[("app", "Model")]
    assert [e.replica for e in entries] == ["r1", "r2", None]
    assert (entries[2].queued, entries[2].ongoing) == (4, 2)
    totals = reading.totals[("app", "Model")]
    assert (totals.count, totals.errors, sum(totals.buckets.values())) == (4, 1, 4)
    assert reading.entries[("app", "Other")] == [] and reading.totals[("app", "Other")].count == 0
    assert len(reading.errors) == stats.MAX_ERRORS and reading.errors[0]["message"] == "bad 24"
    assert 0 < client.pttl(KEYS.stats("app", "Model")) <= stats.STREAM_TTL_MS
    assert client.pttl(KEYS.totals("app", "Model")) > 0


def test_the_stream_keeps_only_the_last_five_minutes() -> None:
    client = fakeredis.FakeRedis()
    now_ms = int(client.time()[0]) * 1000
    old = now_ms - (stats.WINDOW_S + 60) * 1000
    client.xadd(KEYS.stats("a", "d"), {"r": "r0", "n": 9, "e": 0, "s": 1, "h": "3:9"}, id=f"{old}-0")
    stats.write(client, KEYS, "a", "d", "r1", window(1), [], now_ms)
    assert client.xlen(KEYS.stats("a", "d")) == 1  # trimmed by the write (MINID)


def test_the_merge_gives_rates_quantiles_and_five_minute_series() -> None:
    now_ms = 1_000_000_000
    entries = [stats.Entry(now_ms - 1500 - 1000 * i, replica=f"r{i % 2}", window=window(10, 20, errors=i % 2))
               for i in range(100)]
    entries.append(stats.Entry(now_ms - 10_500, queued=7, ongoing=1))
    out = figures(entries, window(1, 2, 3), now_ms)
    assert out["requests_total"] == 3
    assert out["requests_per_s"] == pytest.approx(59 * 2 / 60, abs=0.001)  # 59 entries of 2 in the last minute
    assert out["error_rate"] == pytest.approx(29 / 118, abs=0.0001)  # one error in every other entry
    assert 9 <= out["p50_ms"] <= 22 and out["p99_ms"] >= out["p50_ms"]
    series = out["series"]
    assert len(series["requests_per_s"]) == stats.WINDOW_S == len(series["p99_ms"]) == len(series["queue_depth"])
    # the last bin is the last complete second (now's is not): no entry fell in it
    rps = series["requests_per_s"]
    assert rps[-1] == 0 and rps[-2] == 2 and rps[:100].count(0) == 100
    depth = series["queue_depth"]
    i = stats.WINDOW_S - 11  # the sample's second (10.5 s ago), held a few seconds, then 0
    assert depth[i:i + HOLD_SAMPLE_S + 1] == [7] * (HOLD_SAMPLE_S + 1) and depth[i + HOLD_SAMPLE_S + 1] == 0
    assert series["p99_ms"][0] is None


def test_an_idle_deployment_has_no_rates() -> None:
    out = figures([], None, 5_000_000)
    assert (out["requests_total"], out["requests_per_s"], out["error_rate"], out["p99_ms"]) == (0, 0, None, None)


def test_the_flusher_writes_only_seconds_with_requests() -> None:
    client = fakeredis.FakeRedis()
    tally = RequestStats("a", "d", "r1")
    flusher = StatsFlusher(client, KEYS, tally)
    flusher.flush()
    assert not client.exists(KEYS.stats("a", "d"))
    tally.observe(0.01, codec.encode_value(None))
    flusher.flush()
    assert client.xlen(KEYS.stats("a", "d")) == 1
    assert client.hget(KEYS.totals("a", "d"), "n") == b"1"


def test_rays_metric_names_alongside_ours() -> None:
    m = Metrics()
    m.observe("app", "Front", 200, 0.01, route="/app", method="GET")
    m.observe("app", "Front", 500, 0.02, route="/app", method="POST")
    text = m.render([("app", "Model", 3, 1, 0)], [DeploymentFigures("app", "Model", window(0.5, 3, errors=1))])
    assert 'mqserve_http_requests_total{application="app",deployment="Front",status="200"} 1' in text
    assert ('ray_serve_num_http_requests_total{application="app",route="/app",method="POST",status_code="500"} 1'
            in text)
    assert "ray_serve_num_ongoing_http_requests 0" in text
    assert 'ray_serve_deployment_request_counter_total{application="app",deployment="Model"} 2' in text
    assert 'ray_serve_deployment_error_counter_total{application="app",deployment="Model"} 1' in text
    assert 'ray_serve_deployment_queued_queries{application="app",deployment="Model"} 3' in text
    assert 'ray_serve_deployment_processing_latency_ms_bucket{application="app",deployment="Model",le="0.8"} 1' in text
    assert 'ray_serve_deployment_processing_latency_ms_bucket{application="app",deployment="Model",le="+Inf"} 2' in text
    assert 'ray_serve_deployment_processing_latency_ms_sum{application="app",deployment="Model"} 3.500' in text


def test_the_off_switch_is_a_setting() -> None:
    assert Settings.from_env({}).dashboard is True
    assert Settings.from_env({"MQSERVE_DASHBOARD": "0"}).dashboard is False
    assert Settings.from_env({"MQSERVE_DASHBOARD": "1"}).dashboard is True
    with pytest.raises(ConfigError, match="MQSERVE_DASHBOARD"):
        Settings.from_env({"MQSERVE_DASHBOARD": "maybe"})
