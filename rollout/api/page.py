"""The status page: one HTML page, its stylesheet and its script, served at ``/``.

Where this sits: people watch rollouts on the status page, which reads the same HTTP API as the
``rollout`` CLI (``GET /api/v1/rollouts`` and ``/api/v1/rollouts/{id}/series``) from the browser
and redraws itself every few seconds; for an operator's token (``GET /api/v1/session``) it also
offers the CLI's commands (pause, resume, promote, abort) through the same API. The three files
live in ``rollout/api/static`` and ship inside the wheel; nothing is loaded from anywhere but
the controller itself, so the page works on a machine without internet access, and its
Content-Security-Policy tells the browser to refuse anything else.

The files are open (like ``/healthz``): they hold no data. With tokens configured the API
answers the page's first call with 401, and the page asks for a token.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request, Response

# Only the controller itself: its own files and API; data: for the page's empty favicon.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Asset:
    """One shipped file, read once, with its content type and validator."""

    body: bytes
    content_type: str
    etag: str

    def response(self, request: Request) -> Response:
        headers = {
            "ETag": self.etag,
            # Revalidate every time: an upgraded controller must never run yesterday's script.
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        }
        if self.etag in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.content_type, headers=headers)


# Path on the server -> (file in rollout/api/static, content type).
ASSETS: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/status.css": ("status.css", "text/css; charset=utf-8"),
    "/static/status.js": ("status.js", "text/javascript; charset=utf-8"),
}


@functools.cache
def load_asset(name: str, content_type: str) -> Asset:
    """A file of ``rollout/api/static``; ``FileNotFoundError`` if the install lacks it."""
    body = resources.files("rollout.api").joinpath("static", name).read_bytes()
    digest = hashlib.sha256(body).hexdigest()[:32]
    return Asset(body=body, content_type=content_type, etag=f'"{digest}"')


def page_routes(app: FastAPI) -> None:
    """Serve the page at ``/`` and its two assets under ``/static/``.

    The files are read here, when the application is built, so an install without them fails
    at start-up rather than on the first visit.
    """
    for path, (name, content_type) in ASSETS.items():
        asset = load_asset(name, content_type)
        app.add_api_route(
            path,
            _handler(asset),
            methods=["GET"],
            include_in_schema=False,
            response_class=Response,
        )


def _handler(asset: Asset) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        return asset.response(request)

    return serve


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
