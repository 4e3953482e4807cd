"""The browser page `ldm serve` answers at `/`: one self-contained HTML file plus its scripts and style.

Everything the page needs is served from this package (`serving/web/`): no CDN, no web fonts, so it
works on a machine that reaches nothing outside. The page itself is open (a browser cannot attach a
bearer token to a navigation); it asks for the token once and sends it with every API call.
"""
from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

_MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}

# Paths that need no token: the page, its assets and the health probe.
OPEN_PREFIXES = ("/ui/",)
OPEN_PATHS = frozenset({"/", "/health"})


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _asset(name: str) -> Response:
    """A file of `serving/web/` by its exact name: only names listed in that folder are looked up, so
    nothing a URL can spell (`..`, separators, NUL bytes, encodings of them) reaches the file system."""
    web = resources.files("ldm_system.serving").joinpath("web")
    suffix = name[name.rfind("."):] if "." in name else ""
    if suffix not in _MEDIA or name.startswith(".") or name not in {e.name for e in web.iterdir() if e.is_file()}:
        raise HTTPException(404, f"no page asset named {name!r}")
    return Response(web.joinpath(name).read_bytes(), media_type=_MEDIA[suffix], headers={"Cache-Control": "no-cache"})


def add_web_routes(app: FastAPI) -> None:
    """GET / (the page) and GET /ui/<file> (its assets)."""
    app.get("/", include_in_schema=False)(lambda: _asset("index.html"))

    @app.get("/ui/{name}", include_in_schema=False)
    def ui_asset(name: str) -> Response:
        return _asset(name)


__all__ = ["OPEN_PATHS", "OPEN_PREFIXES", "add_web_routes", "is_open"]
