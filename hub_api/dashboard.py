"""The analysts' dashboard: static files from ``dashboards/static`` at ``/`` and ``/static/...``.

No build step and no CDN: the hub serves the ES modules as they are in the package. The files
hold no data, so they are public like the edge's dashboard (the app's auth middleware lets
``/`` and ``/static/`` through); everything they show comes from the read API, which keeps
asking for ``http.api_key`` (the page prompts for it on a 401).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from dashboards import STATIC_DIR
from edgekite.static_files import add_shared_static_routes

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The page's own CSP (also in index.html's <meta>, which covers file:// copies): only this origin.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidating is cheap; after an upgrade old modules must not meet a new page.
    "Cache-Control": "no-cache",
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(?:js|css|html|svg|png|ico|json)$")


def _file(path: Path) -> web.FileResponse:
    resp = web.FileResponse(path, headers=SECURITY_HEADERS)
    if path.suffix == ".js":
        resp.content_type = "text/javascript"  # module scripts need a JavaScript MIME type
    return resp


async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        raise web.HTTPNotFound(reason="the dashboard is not installed (dashboards/static/index.html)")
    return _file(page)


async def static_file(request: web.Request) -> web.StreamResponse:
    """One file of ``dashboards/static`` by plain name (no sub-directories, no dot files)."""
    name = request.match_info["name"]
    path = STATIC_DIR / name
    if not _NAME.match(name) or not path.is_file():
        raise web.HTTPNotFound(reason=f"no dashboard file {name!r}")
    return _file(path)


def add_dashboard_routes(app: web.Application) -> None:
    """``GET /`` (index.html) and ``GET /static/{name}``, public; call before the app starts."""
    app.router.add_get("/", index)
    add_shared_static_routes(app.router)  # /static/dom.js, shared with the edge's dashboard
    app.router.add_get("/static/{name}", static_file)
