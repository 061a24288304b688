"""Routes that exist only while a setting enables them: admin (ADMIN_TOKEN), bench floor
(BENCH_FLOOR_ENABLED).

They are always mounted and decide per request, from the settings the lifespan put on
app.state. Closed, a route matches nothing, so the request gets exactly what an unknown
path gets: 404 {"detail": "Not Found"}, never a 405, a body-parsing 422 or an auth
challenge that would give the route away. Before the lifespan has run every gate is closed.
"""

from __future__ import annotations

from typing import Any

from starlette.routing import Match
from starlette.types import Scope

from app.api.json_body import StrictJsonRoute
from app.config import Settings
from app.services import services_of


class GatedRoute(StrictJsonRoute):
    """Subclasses say when they are open; use as `APIRouter(route_class=...)`."""

    @staticmethod
    def enabled(settings: Settings) -> bool:
        raise NotImplementedError

    def is_open(self, app: Any) -> bool:
        services = services_of(app.state)
        return services is not None and self.enabled(services.settings)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        app = scope.get("app")
        if app is None or not self.is_open(app):
            return Match.NONE, {}
        return super().matches(scope)


def hide_closed_routes(app: Any, schema: dict[str, Any], routes: list[Any]) -> dict[str, Any]:
    """`schema` without the operations of the closed gated routes among `routes`."""
    closed = [r for r in routes if isinstance(r, GatedRoute) and not r.is_open(app)]
    if not closed:
        return schema
    paths = {path: dict(operations) for path, operations in schema.get("paths", {}).items()}
    for route in closed:
        operations = paths.get(route.path_format)
        if operations is None:
            continue
        for method in route.methods or ():
            operations.pop(method.lower(), None)
        if not operations:
            del paths[route.path_format]
    return {**schema, "paths": paths}
