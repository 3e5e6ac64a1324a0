"""Browser files both dashboards use (``edgekite/static``), served by each at ``/static/<name>``.

The edge's LAN dashboard and the hub's analysts' dashboard are separate apps with separate
packages, but their DOM and formatting helpers are one file, kept once here: a fix to the
escaping rules reaches both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

SHARED_STATIC_DIR = Path(__file__).parent / "static"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _serve(path: Path) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.FileResponse(path)
        resp.content_type = "text/javascript" if path.suffix == ".js" else "text/css"
        return resp

    return handler


def add_shared_static_routes(router: web.UrlDispatcher) -> None:
    """``GET /static/<name>`` for each shared file; register before the app's own static route,
    which would otherwise answer 404 for these names."""
    for path in sorted(SHARED_STATIC_DIR.iterdir()):
        if path.suffix in (".js", ".css") and path.is_file():
            router.add_get(f"/static/{path.name}", _serve(path))


__all__ = ["SHARED_STATIC_DIR", "add_shared_static_routes"]
