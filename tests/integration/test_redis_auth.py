"""A whole cluster (worker, gateway, replicas, this driver) on a Redis that needs TLS, a
password, or an ACL user, reached through nothing but the URL a user would write:

- ``rediss://127.0.0.1:P/0?ssl_ca_certs=/path/ca.pem`` (the CA travels in the URL, so
  every process that gets the URL, replicas included, verifies the server with it),
- ``redis://:secret@127.0.0.1:P/0``,
- ``redis://mq:pw@127.0.0.1:P/0``.

Each Redis is started here on a free port and stopped at teardown; the certificates are
made at test time. Wrong credentials or a wrong CA fail at once with a clear error that
does not show the password.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from starlette.requests import Request

from actors import serve
from actors.handle import DeploymentHandle
from broker.connection import connect
from tests.cluster import LocalCluster
from tests.conftest import free_port
from tests.redis_servers import (
    Certs,
    CertToolMissing,
    RedisServer,
    RedisStartError,
    make_certs,
    redis_server_binaries,
    tls_unsupported,
)

#: A refused connection must be reported within this many seconds (retries included).
FAIL_FAST_S = 10.0
PASSWORD = "s3cret-Pa55"
ACL_USER, ACL_PASSWORD = "mq", "acl-pw-77"


# Deployments ---------------------------------------------------------------------------------

@serve.deployment
class Upper:
    def __call__(self, word: str) -> str:
        return word.upper() + "!"


@serve.deployment
class Front:
    """Calls Upper through a handle, so replicas connect with the URL too."""

    def __init__(self, upper: DeploymentHandle) -> None:
        self._upper = upper

    async def __call__(self, arg: object) -> str:
        word = arg.query_params["word"] if isinstance(arg, Request) else arg
        return await self._upper.remote(word)

    def count(self, n: int):
        for i in range(n):
            yield i


@serve.deployment
class Ticker:
    def __call__(self, request: Request):
        for i in range(int(request.query_params["n"])):
            yield {"tick": i}


# Servers and clusters ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    try:
        return make_certs(str(tmp_path_factory.mktemp("tls")))
    except CertToolMissing as e:
        pytest.skip(f"cannot make TLS certificates: {e}")


@pytest.fixture(scope="module")
def tls_port(certs: Certs) -> Iterator[int]:
    """A TLS-only redis-server (no plain port); clients need not present a certificate."""
    port = free_port()
    args = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", certs.server_cert,
            "--tls-key-file", certs.server_key, "--tls-ca-cert-file", certs.ca, "--tls-auth-clients", "no"]
    reasons = []
    for binary in redis_server_binaries():  # the first one built with TLS
        try:
            server = RedisServer(args, binary=binary)
        except RedisStartError as e:
            reason = tls_unsupported(e.log)
            if not reason:
                raise
            reasons.append(f"{binary}: {reason}")
            continue
        with server:
            yield port
        return
    pytest.skip("no redis-server with TLS support: " + "; ".join(reasons))


@pytest.fixture(scope="module")
def password_port() -> Iterator[int]:
    port = free_port()
    with RedisServer(["--port", str(port), "--requirepass", PASSWORD]):
        yield port


@pytest.fixture(scope="module")
def acl_port() -> Iterator[int]:
    """The default user is off: only ``mq`` with its password gets in."""
    port = free_port()
    with RedisServer(["--port", str(port), "--user", "default", "off",
                      "--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all"]):
        yield port


@contextlib.contextmanager
def cluster_on(url: str) -> Iterator[int]:
    """A worker and a gateway on ``url``, this process's serve connected to it; yields the
    gateway's HTTP port. Stops everything, and proves it, at the end."""
    namespace = f"au{uuid.uuid4().hex[:8]}"
    old = os.environ.get("MQSERVE_NAMESPACE")
    os.environ["MQSERVE_NAMESPACE"] = namespace
    local = LocalCluster(url, namespace)
    try:
        local.add_worker(f"{namespace}-w1")
        port = free_port()
        local.add_gateway(port)
        serve.start(redis_url=url)
        yield port
    finally:
        serve.shutdown()
        left = local.stop()
        if old is None:
            os.environ.pop("MQSERVE_NAMESPACE", None)
        else:
            os.environ["MQSERVE_NAMESPACE"] = old
        assert left == [], f"processes left behind: {left}"


def exercise(http_port: int) -> None:
    """Handle call (through a chained handle in a replica), handle stream, HTTP call and
    HTTP stream: every kind of process and connection (sync and asyncio) touches Redis."""
    handle = serve.run(Front.bind(Upper.bind()), name="auth", route_prefix="/auth")
    assert handle.remote("hello").result(timeout_s=30) == "HELLO!"
    assert list(handle.options(stream=True, method_name="count").remote(4)) == [0, 1, 2, 3]
    r = httpx.get(f"http://127.0.0.1:{http_port}/auth", params={"word": "http"}, timeout=30)
    assert (r.status_code, r.text) == (200, "HTTP!")  # a str goes out as text/plain
    serve.run(Ticker.bind(), name="ticks", route_prefix="/ticks")
    with httpx.stream("GET", f"http://127.0.0.1:{http_port}/ticks", params={"n": 3}, timeout=30) as r:
        assert r.status_code == 200
        assert [json.loads(line) for line in r.iter_lines() if line] == [{"tick": i} for i in range(3)]


def refused(url: str) -> str:
    """serve.start(redis_url=url) must raise ConnectionError quickly; returns its message."""
    started = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        try:
            serve.start(redis_url=url)
        finally:
            serve.shutdown()
    elapsed = time.monotonic() - started
    assert elapsed < FAIL_FAST_S, f"took {elapsed:.1f} s to fail"
    return str(info.value)


# TLS -----------------------------------------------------------------------------------------

def test_cluster_over_tls_with_the_ca_in_the_url(tls_port: int, certs: Certs) -> None:
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certs.ca}"
    with cluster_on(url) as http_port:
        exercise(http_port)


def test_tls_with_a_wrong_or_missing_ca_fails_clearly(tls_port: int, certs: Certs) -> None:
    wrong = refused(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certs.other_ca}")
    assert f"127.0.0.1:{tls_port}" in wrong and "CERTIFICATE_VERIFY_FAILED" in wrong, wrong
    # Without a CA the system's store is used, which does not know our test CA either.
    missing = refused(f"rediss://127.0.0.1:{tls_port}/0")
    assert "CERTIFICATE_VERIFY_FAILED" in missing, missing
    # Plain redis:// against a TLS port is refused, not left waiting.
    refused(f"redis://127.0.0.1:{tls_port}/0")


def test_tls_without_verification_is_possible_when_asked(tls_port: int) -> None:
    """``ssl_cert_reqs=none`` (encrypted, server unverified) is the user's explicit choice."""
    client = connect(f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=none")
    try:
        assert client.ping() is True
    finally:
        client.close()


# Passwords and ACL users ---------------------------------------------------------------------

def test_cluster_with_a_password(password_port: int) -> None:
    with cluster_on(f"redis://:{PASSWORD}@127.0.0.1:{password_port}/0") as http_port:
        exercise(http_port)


def test_a_wrong_or_missing_password_fails_without_showing_it(password_port: int) -> None:
    message = refused(f"redis://:wrong-{PASSWORD}@127.0.0.1:{password_port}/0")
    assert f"127.0.0.1:{password_port}" in message and "***" in message, message
    assert PASSWORD not in message, message
    missing = refused(f"redis://127.0.0.1:{password_port}/0")
    assert "authenticat" in missing.lower(), missing  # NOAUTH or "HELLO must be called ... authenticated"


def test_cluster_with_an_acl_user(acl_port: int) -> None:
    with cluster_on(f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{acl_port}/0") as http_port:
        exercise(http_port)


def test_a_wrong_acl_password_fails_without_showing_it(acl_port: int) -> None:
    message = refused(f"redis://{ACL_USER}:not-{ACL_PASSWORD}@127.0.0.1:{acl_port}/0")
    assert f"{ACL_USER}:***@127.0.0.1:{acl_port}" in message, message
    assert ACL_PASSWORD not in message, message


@pytest.mark.parametrize("which", ["password", "ca"])
def test_a_worker_with_wrong_credentials_stops_with_a_clear_message(which: str, password_port: int, tls_port: int,
                                                                    certs: Certs, tmp_path) -> None:
    """A wrong password or CA will not fix itself: the worker says so and exits (and
    does not print the password)."""
    if which == "password":
        url = f"redis://:wrong-s3cret@127.0.0.1:{password_port}/0"
    else:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certs.other_ca}"
    env = {**os.environ, "MQSERVE_REDIS_URL": url, "MQSERVE_NAMESPACE": f"bad{uuid.uuid4().hex[:6]}"}
    done = subprocess.run([sys.executable, "-m", "actors.runtime.cli", "worker"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot use Redis" in done.stderr and "wrong-s3cret" not in done.stderr
