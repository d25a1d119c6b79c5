"""The web page for business users (issue 14): static files shipped in the package, served at `/` by the
same service, offline (no build step, no CDN, no external fonts). The files are public; every action the
page takes is a call of the public API with the user's key, which the page keeps in the browser tab's
session storage only. A strict Content-Security-Policy keeps the page to its own origin: no inline
script, nothing fetched from elsewhere, images only as the API's data URLs."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "/page/"
FOLDER = Path(__file__).parent / "static"
HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",  # revalidated on every load: an upgraded service never serves a stale page
}


class _Secured:
    """The page's security headers on every static file."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).extend((k.encode(), v.encode()) for k, v in HEADERS.items())
            await send(message)
        await self.app(scope, receive, send_with)


def install(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(FOLDER / "index.html", headers=HEADERS)

    app.mount(PREFIX.rstrip("/"), _Secured(StaticFiles(directory=FOLDER)), name="page")
