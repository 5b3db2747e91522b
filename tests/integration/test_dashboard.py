"""The dashboard's JSON (``GET /-/api/status``), its page, ``/metrics``' Ray names and the
off switch, against a real cluster: one worker and a gateway (and a second gateway)."""

from __future__ import annotations

import os

import httpx
import pytest

from actors import serve
from actors.handle import DeploymentHandle
from broker import stats
from tests.cluster import LocalCluster, free_port, poll


@serve.deployment(num_replicas=2)
class Model:
    def __call__(self, x: str) -> str:
        if x == "fail":
            raise ValueError("dashboard test failure\nsecond line with secret-ish detail")
        return x.upper()


@serve.deployment
class Front:
    def __init__(self, model: DeploymentHandle) -> None:
        self.model = model

    async def __call__(self, request):  # type: ignore[no-untyped-def]
        return await self.model.remote(request.query_params.get("x", "ok"))


@pytest.fixture(scope="module")
def app(serve_instance) -> str:  # type: ignore[no-untyped-def]
    serve.run(Front.bind(Model.bind()), name="dash", route_prefix="/dash")
    yield f"http://127.0.0.1:{os.environ['MQSERVE_HTTP_PORT']}"
    serve.delete("dash")


def status(base: str) -> dict:  # type: ignore[type-arg]
    r = httpx.get(f"{base}/-/api/status", timeout=10)
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    return r.json()


def test_status_lists_the_app_its_deployments_replicas_workers_and_gateways(app: str,
                                                                            cluster: LocalCluster) -> None:
    # Given a running app, When the JSON is read
    data = status(app)
    # Then it has the app, its two deployments, each replica with its worker, and the members
    dash = data["applications"]["dash"]
    assert dash["status"] == "RUNNING" and dash["route_prefix"] == "/dash" and dash["ingress"] == "Front"
    model = dash["deployments"]["Model"]
    assert model["target_replicas"] == 2 and model["replica_states"] == {"RUNNING": 2}
    assert len(model["replicas"]) == 2
    assert {r["worker"] for r in model["replicas"]} == set(cluster.registry.nodes())
    assert all(r["state"] == "RUNNING" and r["pid"] for r in model["replicas"])
    assert set(data["workers"]) == set(cluster.registry.nodes())
    assert all(w["heartbeat_age_s"] is not None for w in data["workers"].values())
    assert len(data["gateways"]) >= 1 and data["controller"]
    assert len(model["series"]["requests_per_s"]) == stats.WINDOW_S
    assert len(model["series"]["queue_depth"]) == stats.WINDOW_S


def test_requests_and_latency_show_within_seconds(app: str) -> None:
    # Given requests served through the gateway
    before = status(app)["applications"]["dash"]["deployments"]["Model"]["requests_total"]
    with httpx.Client(timeout=10) as client:
        for _ in range(30):
            assert client.get(f"{app}/dash?x=hi").text == "HI"
    # Then, within a flush or two, every figure counts them
    model = poll(lambda: (m := status(app)["applications"]["dash"]["deployments"]["Model"])["requests_total"]
                 >= before + 30 and m, timeout_s=10, what="requests counted")
    assert model["requests_per_s"] > 0
    assert model["p50_ms"] is not None and model["p99_ms"] >= model["p50_ms"]
    assert sum(model["series"]["requests_per_s"]) >= 1 or model["requests_total"] >= 30


def test_a_failed_request_is_listed_without_its_arguments(app: str) -> None:
    # When a request fails in a deployment
    r = httpx.get(f"{app}/dash?x=fail", timeout=10)
    assert r.status_code == 500
    # Then it is among the recent errors: type, first line, deployment; nothing more
    def listed():  # type: ignore[no-untyped-def]
        errors = status(app)["recent_errors"]
        return [e for e in errors if e["type"] == "ValueError" and e["deployment"] == "Model"]

    errors = poll(listed, timeout_s=10, what="the failure listed")
    assert errors[0]["message"] == "dashboard test failure"
    assert errors[0]["app"] == "dash" and errors[0]["time_s"] > 0
    assert set(errors[0]) == {"time_s", "app", "deployment", "replica", "type", "message", "request_id"}
    assert "fail" not in str(status(app)["recent_errors"]).replace("failure", "")
    model = status(app)["applications"]["dash"]["deployments"]["Model"]
    assert model["errors_total"] >= 1 and model["error_rate"] > 0


def test_every_gateway_shows_the_same_figures(app: str, cluster: LocalCluster) -> None:
    port = free_port()
    cluster.add_gateway(port)
    try:
        other = f"http://127.0.0.1:{port}"
        a, b = status(app), status(other)
        model_a, model_b = (d["applications"]["dash"]["deployments"]["Model"] for d in (a, b))
        assert model_a["requests_total"] == model_b["requests_total"]
        assert model_a["replicas"] == model_b["replicas"]
    finally:
        cluster.stop_gateway(port)


def test_the_page_and_its_script_are_served(app: str) -> None:
    page = httpx.get(f"{app}/-/dashboard", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="dashboard.js">' in page.text and "http" not in page.text.split("<body>")[1].replace(
        "http://www.w3.org", "")  # nothing loaded from elsewhere
    script = httpx.get(f"{app}/-/dashboard.js", timeout=10)
    assert script.status_code == 200 and "api/status" in script.text


def test_metrics_keep_theirs_and_add_rays_names(app: str) -> None:
    httpx.get(f"{app}/dash?x=m", timeout=10)
    poll(lambda: 'ray_serve_deployment_request_counter_total{application="dash",deployment="Model"}'
         in httpx.get(f"{app}/metrics", timeout=10).text, timeout_s=10, what="deployment counters")
    text = httpx.get(f"{app}/metrics", timeout=10).text
    for name in ("mqserve_http_requests_total", "mqserve_deployment_queued_requests",
                 "ray_serve_num_http_requests_total", "ray_serve_deployment_request_counter_total",
                 "ray_serve_deployment_error_counter_total", "ray_serve_deployment_processing_latency_ms_bucket",
                 "ray_serve_deployment_queued_queries", "ray_serve_num_ongoing_http_requests"):
        assert name in text, name
    assert 'ray_serve_num_http_requests_total{application="dash",route="/dash",method="GET",status_code="200"}' in text
    assert 'ray_serve_deployment_processing_latency_ms_bucket{application="dash",deployment="Model",le="+Inf"}' in text


def test_the_off_switch_turns_off_page_and_json(app: str, cluster: LocalCluster) -> None:
    port = free_port()
    cluster.add_gateway(port, env={"MQSERVE_DASHBOARD": "0"})
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/-/dashboard", timeout=10).status_code == 404
        assert httpx.get(f"{base}/-/api/status", timeout=10).status_code == 404
        assert httpx.get(f"{base}/-/routes", timeout=10).status_code == 200
    finally:
        cluster.stop_gateway(port)
