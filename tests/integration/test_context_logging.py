"""Issue 13, parts 2 and 4, against real processes: the replica context
(``serve.get_replica_context()``, ranks and world size), the request context and request
ids along a chain, and the replica's log (``logging_config``, JSON lines, access logs).

Local mode (private Redis, one node); test_context_cluster.py has what needs a
cluster: ranks on two workers, request ids through a separate gateway.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from actors import serve
from actors.config import LoggingConfig
from actors.exceptions import RayServeException
from actors.handle import DeploymentHandle
from tests.cluster import poll, serve_in


@pytest.fixture(scope="module")
def local(redis_url: str) -> Iterator[int]:
    """serve in local mode, in a namespace of its own; yields the gateway's port."""
    with serve_in("local", redis_url, prefix="ctx"):
        yield int(os.environ["MQSERVE_HTTP_PORT"])


def _request_context() -> dict[str, str]:
    request = serve.context._serve_request_context.get()
    return {"request_id": request.request_id, "internal": request._internal_request_id, "route": request.route}


@serve.deployment
class Leaf:
    def __call__(self, x: int = 0) -> dict[str, str]:
        logging.getLogger("ray.serve").info("leaf saw %s", x)
        return _request_context()


@serve.deployment
class Middle:
    def __init__(self, leaf: DeploymentHandle) -> None:
        self.leaf = leaf

    async def __call__(self, request: object = None) -> dict[str, object]:
        logging.getLogger("ray.serve").info("middle")
        return {"middle": _request_context(), "leaf": await self.leaf.remote(1)}


def _lines(logs_dir: Path, deployment: str) -> list[dict[str, object]]:
    out = []
    for path in logs_dir.glob(f"replica_*_{deployment}_*.log"):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    return out


def test_get_replica_context_outside_a_replica_raises_rays_error() -> None:
    with pytest.raises(RayServeException, match=r"`serve.get_replica_context\(\)` may only be called from "
                                                r"within a Ray Serve deployment"):
        serve.get_replica_context()
    # Outside a request, the request context is empty, as Ray's.
    assert serve.context._get_serve_request_context().request_id == ""


def test_replica_context_names_the_replica(local: int) -> None:
    @serve.deployment(name="Ctx")
    class WhoAmI:
        def __call__(self) -> dict[str, object]:
            ctx = serve.get_replica_context()
            return {"app": ctx.app_name, "deployment": ctx.deployment, "tag": ctx.replica_tag,
                    "unique_id": ctx.replica_id.unique_id, "full": ctx.replica_id.to_full_id_str(),
                    "servable": type(ctx.servable_object).__name__, "rank": ctx.rank.rank,
                    "world_size": ctx.world_size}

    got = serve.run(WhoAmI.bind(), name="ctxapp", route_prefix="/ctx").remote().result()
    assert (got["app"], got["deployment"], got["servable"]) == ("ctxapp", "Ctx", "WhoAmI")
    assert got["tag"] == got["unique_id"] and len(got["tag"]) == 8
    assert got["full"] == f"SERVE_REPLICA::ctxapp#Ctx#{got['tag']}"
    assert (got["rank"], got["world_size"]) == (0, 1)
    serve.delete("ctxapp")


def test_handle_calls_each_get_a_request_id_shared_down_the_chain(local: int, tmp_path: Path) -> None:
    # Given a chain whose replicas log JSON to a directory of the test's
    logging_config = {"encoding": "JSON", "logs_dir": str(tmp_path)}
    app = Middle.options(logging_config=logging_config).bind(Leaf.options(logging_config=logging_config).bind())
    handle = serve.run(app, name="chain", route_prefix="/chain")
    # When the driver calls it twice
    first, second = handle.remote().result(), handle.remote().result()
    # Then each call has its own request id, which the downstream call carries...
    for got in (first, second):
        assert got["middle"]["request_id"] and got["leaf"]["request_id"] == got["middle"]["request_id"]
        assert got["leaf"]["internal"] != got["middle"]["internal"]  # ...distinct from internal ids
        assert got["middle"]["route"] == ""  # a handle call has no route, as in Ray
    assert first["middle"]["request_id"] != second["middle"]["request_id"]
    # And one grep of the id finds the request's lines in both replicas' logs
    rid = first["middle"]["request_id"]

    def lines_of_request() -> list[dict[str, object]]:
        found = [line for dep in ("Middle", "Leaf") for line in _lines(tmp_path, dep) if line.get("request_id") == rid]
        return found if len(found) >= 4 else []

    found = poll(lines_of_request, timeout_s=10, what="the request's log lines")
    messages = {(line["deployment"], line["message"]) for line in found}
    assert ("chain_Middle", "middle") in messages and ("chain_Leaf", "leaf saw 1") in messages
    assert any(str(m).startswith("CALL __call__ OK ") and d == "chain_Leaf" for d, m in messages)
    for line in found:
        assert line["application"] == line["app"] == "chain" and line["replica"]
    serve.delete("chain")


def test_http_request_ids_in_and_out(local: int, tmp_path: Path) -> None:
    handle_app = Middle.options(logging_config={"logs_dir": str(tmp_path)}).bind(Leaf.bind())
    serve.run(handle_app, name="web", route_prefix="/web")
    url = f"http://127.0.0.1:{local}/web"
    # The client's X-Request-Id is the request's id, down the chain, and comes back
    r = httpx.get(url, headers={"X-Request-Id": "client-req-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "client-req-1"
    body = r.json()
    assert body["middle"]["request_id"] == body["leaf"]["request_id"] == "client-req-1"
    assert body["middle"]["route"] == "/web"
    # Without one, the request gets a new id, in the response too
    r = httpx.get(url)
    assert r.headers["x-request-id"] == r.json()["leaf"]["request_id"] != "client-req-1"
    # The access line of an HTTP request: method, route, status, ms (TEXT by default)
    path = next(tmp_path.glob("replica_web_Middle_*.log"))
    poll(lambda: "client-req-1 -- GET /web 200 " in path.read_text(), timeout_s=10, what="the access line")
    serve.delete("web")


def test_logging_config_levels_and_access_log_off(local: int, tmp_path: Path) -> None:
    @serve.deployment(logging_config=LoggingConfig(encoding="JSON", enable_access_log=False, logs_dir=str(tmp_path)))
    def quiet() -> str:
        logging.getLogger("ray.serve").debug("debug line")
        logging.getLogger("ray.serve").info("info line")
        return "ok"

    @serve.deployment
    def chatty() -> str:
        logging.getLogger("ray.serve").debug("debug line")
        return "ok"

    # serve.run's logging_config goes to the deployments without one of their own (Ray's rule)
    serve.run(quiet.bind(), name="quiet", route_prefix="/quiet",
              logging_config={"log_level": "DEBUG", "logs_dir": str(tmp_path)})
    serve.run(chatty.bind(), name="chatty", route_prefix="/chatty",
              logging_config={"log_level": "DEBUG", "encoding": "JSON", "logs_dir": str(tmp_path)})
    assert serve.get_app_handle("quiet").remote().result() == "ok"
    assert serve.get_app_handle("chatty").remote().result() == "ok"
    chatty_lines = poll(lambda: [m for m in (line["message"] for line in _lines(tmp_path, "chatty"))
                                 if m == "debug line" or str(m).startswith("CALL")] or None,
                        timeout_s=10, what="chatty's lines")
    assert "debug line" in chatty_lines
    poll(lambda: any(line["message"] == "info line" for line in _lines(tmp_path, "quiet")), timeout_s=10,
         what="quiet's info line")
    quiet_messages = [line["message"] for line in _lines(tmp_path, "quiet")]
    assert "debug line" not in quiet_messages  # its own INFO level, not the app's DEBUG
    assert not any(str(m).startswith("CALL") for m in quiet_messages)  # no access log
    serve.delete("quiet")
    serve.delete("chatty")
