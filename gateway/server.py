"""Run the gateway under uvicorn: ``mqserve gateway`` and local mode's gateway process."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import uvicorn

from actors.config import Settings
from actors.runtime.procs import setup_logging
from broker import codec

from .app import create_app
from .failures import ResponseAborted

#: Largest request head (request line and headers) a client may send: uvicorn's httptools
#: protocol has no limit of its own, and one endless header would grow the gateway's
#: memory and stall its event loop (httptools joins the pieces of a header over and over).
MAX_HEAD_BYTES = 1024 * 1024

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools: uvicorn's h11 protocol, which has a limit of its own (16 kB)
    HttpToolsProtocol = None  # type: ignore[assignment, misc]  # None stands for "no httptools"


if HttpToolsProtocol is not None:
    class _BoundedHttpTools(HttpToolsProtocol):
        """uvicorn's httptools protocol that answers 431 and closes when a request's head
        passes :data:`MAX_HEAD_BYTES` (counted from the end of the previous request)."""

        _in_head = True
        _head_bytes = 0

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._in_head = False
                    msg = b"Request header fields too large."
                    self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                         b"content-type: text/plain; charset=utf-8\r\n"
                                         b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(msg), msg))
                    self.transport.close()
                    return
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._in_head, self._head_bytes = False, 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_head = True
            super().on_message_complete()


class _Server(uvicorn.Server):
    """Tells whoever started us (a pipe fd) once the socket is bound and serving."""

    def __init__(self, config: uvicorn.Config, ready_fd: int | None) -> None:
        super().__init__(config)
        self.ready_fd = ready_fd

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.ready_fd is not None:
            os.write(self.ready_fd, b"ready\n" if self.started else b"failed\n")
            os.close(self.ready_fd)
            self.ready_fd = None


def _not_aborted(record: logging.LogRecord) -> bool:
    """Drop uvicorn's "Exception in ASGI application" for :class:`ResponseAborted`: the
    gateway raises it to cut a response that cannot be completed, and logged why."""
    return not (record.exc_info and isinstance(record.exc_info[1], ResponseAborted))


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    codec.use_secret(settings.secret)
    parser = argparse.ArgumentParser(prog="mqserve gateway")
    parser.add_argument("--redis-url", default=settings.redis_url, required=settings.redis_url is None)
    parser.add_argument("--namespace", default=settings.namespace)
    parser.add_argument("--host", default=settings.http_host)
    parser.add_argument("--port", type=int, default=settings.http_port)
    parser.add_argument("--request-timeout-s", type=_positive, default=settings.http_timeout_s,
                        help="answer 408 and cancel a request after this many seconds "
                             "(default: MQSERVE_HTTP_TIMEOUT_S, else none)")
    parser.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    setup_logging(settings.log_level, "gateway", quiet=())
    app = create_app(opts.redis_url, opts.namespace, result_ttl_ms=settings.result_ttl_ms,
                     max_body_bytes=settings.max_body_bytes, timeout_s=opts.request_timeout_s,
                     address=(opts.host, opts.port), dashboard=settings.dashboard)
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level="warning", access_log=False,
                            lifespan="on", timeout_keep_alive=90,
                            http=_BoundedHttpTools if HttpToolsProtocol is not None else "auto")
    # After Config, which configures uvicorn's loggers: a response cut on purpose is no crash.
    logging.getLogger("uvicorn.error").addFilter(_not_aborted)
    server = _Server(config, opts.ready_fd)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
