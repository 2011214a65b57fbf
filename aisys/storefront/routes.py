"""Routes for the storefront page, its catalogue, and the operator view.

:func:`install_storefront` adds to a FastAPI app::

    GET /                 -> redirect to /shop
    GET /shop             -> the storefront page (a storefront-scope key in a <meta> tag)
    GET /ops              -> the operator view (asks for an admin key; holds no secret)
    GET /shop/static/...  -> the page's JS/CSS, packaged with aisys (works offline, no CDN)
    GET /catalogue        -> categories, products, sample users          (scope: storefront)
    GET /admin/overview   -> models, retrain decisions, drift, UI links   (scope: admin)
    GET /admin/reports/drift/latest -> the newest Evidently report        (scope: admin)

Only a storefront-scope key ever reaches the browser: it is the page's
publishable key, tightly rate-limited by the gateway. The operator view takes
the admin key from a password field and keeps it in page memory only.
"""

# No `from __future__ import annotations`: FastAPI evaluates the annotations.
import html
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from aisys.storefront.catalogue import Catalogue

Guard = Callable[[str], Callable[..., Any]]
Overview = Callable[[], Awaitable[dict[str, Any]]]
ReportPath = Callable[[], Awaitable["Path | None"]]

# The pages load only their own scripts and styles, and call only this origin.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def static_dir() -> str:
    """The packaged folder of the page assets."""
    return str(resources.files("aisys.storefront") / "static")


def _read(name: str) -> str:
    return (resources.files("aisys.storefront") / "static" / name).read_text(encoding="utf-8")


def render_shop_page(storefront_key: str | None) -> str:
    """The storefront HTML with the publishable key in a meta tag (escaped)."""
    return _read("index.html").replace("{{STOREFRONT_KEY}}", html.escape(storefront_key or "", quote=True))


def _no_guard(scope: str) -> Callable[..., None]:
    def allow() -> None:
        return None

    return allow


def storefront_router(
    catalogue: Callable[[], Catalogue | None],
    storefront_key: Callable[[], str | None],
    guard: Guard | None = None,
    overview: Overview | None = None,
    latest_report: ReportPath | None = None,
) -> APIRouter:
    """The storefront routes; ``guard(scope)`` gives the dependency that enforces a key scope."""
    require = guard or _no_guard
    router = APIRouter(tags=["storefront"])

    @router.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/shop")

    @router.get("/shop", response_class=HTMLResponse, summary="The storefront page")
    async def shop() -> HTMLResponse:
        return HTMLResponse(render_shop_page(storefront_key()), headers=PAGE_HEADERS)

    @router.get("/ops", response_class=HTMLResponse, summary="The operator view (needs an admin key)")
    async def ops() -> HTMLResponse:
        return HTMLResponse(_read("ops.html"), headers=PAGE_HEADERS)

    @router.get("/catalogue", dependencies=[Depends(require("storefront"))])
    async def get_catalogue(
        category: Annotated[str | None, Query(max_length=128, description="Only this category.")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 48,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """Products (most popular first), the category list and a few sample users."""
        cat = catalogue()
        if cat is None:
            raise HTTPException(status_code=503, detail="the catalogue is not loaded yet")
        return {
            "categories": cat.categories(),
            "items": [p.to_dict() for p in cat.page(category, limit, offset)],
            "total": len(cat),
            "sample_users": cat.sample_users,
        }

    @router.get("/admin/overview", dependencies=[Depends(require("admin"))])
    async def admin_overview() -> dict[str, Any]:
        """Champion and challenger with lineage, retrain decisions, drift gauges and UI links."""
        if overview is None:
            raise HTTPException(status_code=503, detail="no operator overview is configured")
        return await overview()

    @router.get("/admin/reports/drift/latest", dependencies=[Depends(require("admin"))],
                response_class=FileResponse)
    async def latest_drift_report() -> FileResponse:
        """The newest Evidently drift report (self-contained HTML)."""
        path = None if latest_report is None else await latest_report()
        if path is None:
            raise HTTPException(status_code=404, detail="no drift report has been written yet")
        return FileResponse(path, media_type="text/html")

    return router


def install_storefront(
    app: FastAPI,
    catalogue: Callable[[], Catalogue | None],
    storefront_key: Callable[[], str | None],
    guard: Guard | None = None,
    overview: Overview | None = None,
    latest_report: ReportPath | None = None,
) -> None:
    """Mount the page assets and include :func:`storefront_router` on ``app``."""
    app.mount("/shop/static", StaticFiles(directory=static_dir()), name="storefront-static")
    app.include_router(storefront_router(catalogue, storefront_key, guard, overview, latest_report))
