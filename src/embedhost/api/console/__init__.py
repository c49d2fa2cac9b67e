"""The web console: a page for people, served by the server itself.

Static files beside this module (index.html, app.js, style.css: no build step, no CDN,
nothing vendored) and :mod:`.stats`, the read-only JSON of live numbers the page polls.
``GET /`` answers the page to a browser (``Accept`` prefers ``text/html`` over JSON) and
the JSON index to everyone else (``routes/ops.py`` asks :func:`wants_html`); the assets live
under ``/console/``. Off with ``server.console: false``.

The page holds no secret: the API key is typed into it and kept in the tab's
``sessionStorage``, and every call it makes is an ordinary API call that needs the
``embed`` scope. A strict Content-Security-Policy allows scripts, styles and connections
to this origin only, so a text a user pastes can never run as code.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from embedhost.api.console.stats import router as stats_router

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}
ASSETS = {"app.js": "text/javascript", "rerank.js": "text/javascript", "style.css": "text/css"}


@cache
def _read(name: str) -> bytes:
    return (resources.files(__package__) / name).read_bytes()


def _accept_q(accept: str) -> dict[str, float]:
    """Media range -> q from an Accept header (malformed q counts as 0)."""
    out: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media:
            out[media] = max(q, out.get(media, 0.0))
    return out


def wants_html(accept: str | None) -> bool:
    """True when the client prefers HTML to JSON: a browser navigating to /.

    ``*/*`` (curl, httpx, SDKs) and ties go to JSON, so no API client gets a page.
    """
    if not accept:
        return False
    q = _accept_q(accept)
    html = max(q.get("text/html", 0.0), q.get("application/xhtml+xml", 0.0))
    return html > q.get("application/json", 0.0)


def page() -> Response:
    return Response(
        _read("index.html"),
        media_type="text/html; charset=utf-8",
        headers={**SECURITY_HEADERS, "Vary": "Accept"},
    )


router = APIRouter(tags=["console"])
router.include_router(stats_router)  # before /console/{asset}, which would match it


@router.get("/console/{asset}", include_in_schema=False)
async def console_asset(asset: str) -> Response:
    if asset not in ASSETS:
        raise HTTPException(status_code=404, detail="Not Found")
    return Response(_read(asset), media_type=ASSETS[asset], headers=SECURITY_HEADERS)
