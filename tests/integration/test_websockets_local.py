"""WebSockets in local mode (a private Redis on a Unix socket, the driver's node and
gateway): the same path as in ``test_websockets``, which runs in cluster mode."""

from __future__ import annotations

import os

import pytest

from tests.cluster import serve_in
from tests.integration.test_websockets import deploy_echo

pytest.importorskip("websockets")

from websockets.sync.client import connect  # noqa: E402


def test_websockets_in_local_mode(redis_url) -> None:
    with serve_in("local", redis_url, prefix="ws"):
        deploy_echo(name="localecho", route_prefix="/local")
        with connect(f"ws://127.0.0.1:{os.environ['MQSERVE_HTTP_PORT']}/local/ws") as ws:
            for i in range(20):
                ws.send(f"local {i}")
                assert ws.recv(timeout=10) == f"local {i}"
