"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) served from installed files, so they work offline.

FastAPI's default pages load their JavaScript and CSS from a CDN: on a machine without internet they stay
blank. The assets come from the pinned ``fastapi-offline`` package (MIT; it ships ``swagger-ui-bundle.js``,
``swagger-ui.css``, ``redoc.standalone.js`` and a favicon in ``fastapi_offline/static``). Only its files are
used, through FastAPI's own page builders (``get_swagger_ui_html``, ``get_redoc_html``), so the pages look
and behave like FastAPI's. ReDoc's Google Fonts link is left out (``with_google_fonts=False``).
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def assets_dir() -> str:
    """The folder of the installed Swagger UI and ReDoc files."""
    return str(resources.files("fastapi_offline") / "static")


def install_offline_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Mount the assets at :data:`ASSETS_URL` and add ``docs_url`` and ``redoc_url`` pages that use them.

    Build ``app`` with ``docs_url=None, redoc_url=None`` (FastAPI's CDN pages off) and an ``openapi_url``.
    """
    if not app.openapi_url:
        raise ValueError("install_offline_docs needs an app with an openapi_url")
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    oauth2_redirect = f"{docs_url}/oauth2-redirect"

    def root(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        base = root(request)
        return get_swagger_ui_html(
            openapi_url=f"{base}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{base}{oauth2_redirect}",
            swagger_js_url=f"{base}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{base}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        base = root(request)
        return get_redoc_html(
            openapi_url=f"{base}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{base}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{base}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
