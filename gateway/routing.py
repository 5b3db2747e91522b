"""The route table: longest ``route_prefix`` wins, as in Ray Serve."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Route:
    prefix: str
    app: str
    ingress: str

    @property
    def root_path(self) -> str:
        """The ASGI ``root_path`` the ingress sees: the prefix, or '' for '/'."""
        return "" if self.prefix == "/" else self.prefix


class RouteTable:
    """Prefixes sorted longest first; a prefix matches itself and anything below it."""

    def __init__(self, apps: dict[str, dict[str, Any]] | None = None) -> None:
        routes = [Route(rec["route_prefix"], name, rec["ingress"])
                  for name, rec in (apps or {}).items() if rec.get("route_prefix")]
        self.routes = sorted(routes, key=lambda r: len(r.prefix), reverse=True)

    def match(self, path: str) -> Route | None:
        for route in self.routes:
            p = route.prefix
            if p == "/" or path == p or path.startswith(p + "/"):
                return route
        return None

    def as_dict(self) -> dict[str, str]:
        """Ray Serve's ``/-/routes`` shape: route prefix -> application name."""
        return {r.prefix: r.app for r in sorted(self.routes, key=lambda r: r.prefix)}
