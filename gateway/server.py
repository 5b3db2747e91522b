"""Run the gateway under uvicorn: ``mqserve gateway`` and local mode's gateway process."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Optional

import uvicorn

from actors.config import Settings

from .app import DEFAULT_MAX_BODY_BYTES, create_app


class _Server(uvicorn.Server):
    """Tells whoever started us (a pipe fd) once the socket is bound and serving."""

    def __init__(self, config: uvicorn.Config, ready_fd: Optional[int]) -> None:
        super().__init__(config)
        self.ready_fd = ready_fd

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.ready_fd is not None:
            os.write(self.ready_fd, b"ready\n" if self.started else b"failed\n")
            os.close(self.ready_fd)
            self.ready_fd = None


def main(argv: Optional[list[str]] = None) -> int:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(prog="mqserve gateway")
    parser.add_argument("--redis-url", default=settings.redis_url, required=settings.redis_url is None)
    parser.add_argument("--namespace", default=settings.namespace)
    parser.add_argument("--host", default=settings.http_host)
    parser.add_argument("--port", type=int, default=settings.http_port)
    parser.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    level = os.environ.get("MQSERVE_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s gateway %(levelname)s %(name)s: %(message)s")
    max_body = int(os.environ.get("MQSERVE_MAX_BODY_BYTES") or DEFAULT_MAX_BODY_BYTES)
    timeout = os.environ.get("MQSERVE_HTTP_TIMEOUT_S")
    app = create_app(opts.redis_url, opts.namespace, result_ttl_ms=settings.result_ttl_ms,
                     max_body_bytes=max_body, timeout_s=float(timeout) if timeout else None,
                     address=(opts.host, opts.port))
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level="warning", access_log=False,
                            lifespan="on", timeout_keep_alive=90)
    server = _Server(config, opts.ready_fd)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
