"""``request_timeout_s`` from ``serve.start(http_options=...)`` reaches the local gateway
(the config file's ``http_options`` are in test_cli.py, MQSERVE_HTTP_TIMEOUT_S in
test_http_parity.py)."""

from __future__ import annotations

import pytest

from actors import serve
from tests.conftest import free_port, run_python


def test_serve_start_request_timeout_answers_408() -> None:
    port = free_port()
    code = (
        "import httpx\n"
        "from actors import serve\n"
        "from tests.apps.sleeper import app\n"
        f"serve.start(http_options={{'port': {port}, 'request_timeout_s': 1}})\n"
        "serve.run(app, route_prefix='/sleep')\n"
        f"slow = httpx.get('http://127.0.0.1:{port}/sleep?s=30', timeout=20)\n"
        f"fast = httpx.get('http://127.0.0.1:{port}/sleep?s=0', timeout=20)\n"
        "print(slow.status_code, slow.text.endswith('timed out after 1.0s.'), fast.status_code)\n"
        "serve.shutdown()\n")
    proc = run_python(code, env={"MQSERVE_REDIS_URL": "", "MQSERVE_NAMESPACE": f"to{port}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["408", "True", "200"]


@pytest.mark.parametrize("timeout", [0, "1", True, float("nan")])
def test_request_timeout_must_be_a_positive_number(timeout) -> None:
    with pytest.raises(ValueError, match="request_timeout_s"):
        serve.start(http_options={"request_timeout_s": timeout})
