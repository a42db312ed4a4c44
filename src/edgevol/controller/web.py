"""The operator console: static files that run in the browser and speak only to the admin API.

Why this shape:
- The page is plain files (HTML, CSS, JavaScript modules) with no server-side
  rendering and no session of its own: the browser signs in with the admin
  token, keeps it in localStorage and sends it as ``Authorization: Bearer`` on
  every call to ``/api/v1``. So the console can do exactly what the API lets
  an operator do, and nothing is written around the API.
- No cookies, and no CORS headers anywhere: a page on another site can neither
  read this origin's localStorage nor send an ``Authorization`` header here
  (that needs a CORS preflight, which this server never grants), so cross-site
  requests cannot act (no CSRF tokens needed).
- Every console response carries a strict Content-Security-Policy: scripts,
  styles and connections from this origin only, no inline script or style,
  no framing. The JavaScript builds the DOM with ``textContent`` and
  ``createElement``, never ``innerHTML`` with data.
- Only named files are served: the console's own (``console/*.html|js|css``
  next to this module) and uPlot's two files from the vendor directory
  (npm's ``uplot/dist``, installed by ``make setup``). Without uPlot the
  console works and says that charts need it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

import edgevol.controller

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
# uPlot as npm installs it beside the venv (editable install: src/edgevol/controller -> repository root).
DEFAULT_VENDOR_DIR = Path(edgevol.controller.__file__).resolve().parents[3] / ".tools" / "npm" / "node_modules" \
    / "uplot" / "dist"
VENDOR_ENV = "EDGEVOL_CONSOLE_VENDOR"
VENDOR_FILES = ("uPlot.iife.min.js", "uPlot.min.css")
VENDOR_MARK = "<!-- vendor -->"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8"}
_CONSOLE_NAME = re.compile(r"^[a-z][a-z0-9-]*\.(?:html|js|css)$")


def vendor_dir() -> Path:
    """Where uPlot's files are: ``$EDGEVOL_CONSOLE_VENDOR`` if set, else npm's copy in the repository."""
    env = os.environ.get(VENDOR_ENV)
    return Path(env) if env else DEFAULT_VENDOR_DIR


def vendor_available(directory: Path | None = None) -> bool:
    d = directory or vendor_dir()
    return all((d / name).is_file() for name in VENDOR_FILES)


def _file(path: Path) -> Response:
    try:
        body = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise HTTPException(404, "not found") from None
    return Response(body, media_type=TYPES[path.suffix], headers=SECURITY_HEADERS)


def index_html(directory: Path | None = None) -> str:
    """The page, with uPlot's stylesheet and script linked in when they are installed."""
    page = (CONSOLE_DIR / "index.html").read_text()
    links = ""
    if vendor_available(directory):
        links = ('<link rel="stylesheet" href="/console/vendor/uPlot.min.css">\n'
                 '<script src="/console/vendor/uPlot.iife.min.js" defer></script>')
    return page.replace(VENDOR_MARK, links)


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)

    @r.get("/")
    @r.get("/console/")
    @r.get("/console/index.html")
    def index() -> Response:
        return Response(index_html(), media_type=TYPES[".html"], headers=SECURITY_HEADERS)

    @r.get("/console/vendor/{name}")
    def vendor(name: str) -> Response:
        if name not in VENDOR_FILES:
            raise HTTPException(404, "not found")
        return _file(vendor_dir() / name)

    @r.get("/console/{name}")
    def console_file(name: str) -> Response:
        if not _CONSOLE_NAME.match(name):
            raise HTTPException(404, "not found")
        return _file(CONSOLE_DIR / name)

    return r
