"""Routes for the storefront page, its catalogue, and the operator view.

:func:`install_storefront` adds to a FastAPI app::

    GET /                 -> redirect to /shop
    GET /shop             -> the storefront page (no credential in it: it asks POST /shop/session)
    GET /ops              -> the operator view (asks for an admin key; holds no secret)
    GET /shop/static/...  -> the page's JS/CSS, packaged with aisys (works offline, no CDN)
    GET /catalogue        -> one page of products with the total, categories  (scope: storefront)
    GET /shop/recommendations/{user_id}?viewing=&basket= -> the shelf beside a product (scope: recommend)
    GET /admin/overview   -> models, retrain decisions, drift, UI links   (scope: admin)
    GET /admin/reports/drift/latest -> the newest Evidently report        (scope: admin)

No API key ever reaches the browser: the page gets a shopper session bound to
one (anonymous) user from ``POST /shop/session`` (aisys.gateway.shopper), and the
gateway lets it read and write only that user. ``sample_users`` of
``/catalogue`` is shown to admin callers only (user ids are not public). The
operator view takes the admin key from a password field and keeps it in page memory only.
"""

# No `from __future__ import annotations`: FastAPI evaluates the annotations.
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path as PathParam, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from aisys.storefront.catalogue import Catalogue, Product
from aisys.storefront.images import product_image
from aisys.storefront.shelf import (
    MAX_BASKET, SHELF_HEADINGS, fetch_size, product_shelf, readable_reason, shelf_exclusions,
)
from aisys.storefront.traffic import RequestWindow, TrafficMiddleware

Guard = Callable[[str], Callable[..., Any]]
Overview = Callable[[], Awaitable[dict[str, Any]]]
ReportPath = Callable[[], Awaitable["Path | None"]]
# (user_id, k) -> the serving layer's ranked answer (a RecommendationsOut or its dict).
Recommend = Callable[[str, int], Awaitable[Any]]
MAX_PAGE = 200
MAX_SHELF = 50

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


def render_shop_page(storefront_key: str | None = None) -> str:
    """The storefront HTML. It embeds no credential (the page asks ``POST /shop/session``);
    ``storefront_key`` is ignored and stays only until the callers drop it."""
    return _read("index.html")


def product_json(product: Product) -> dict[str, Any]:
    """A product as the page shows it: its table fields plus its drawn picture (a ``data:`` URI)."""
    return {**product.to_dict(), "image": product_image(product.item_id, product.title,
                                                        product.category, product.colour)}


def _invalid(field: str, message: str) -> RequestValidationError:
    """A 422 in the API's one error shape, naming the query parameter to blame."""
    return RequestValidationError([{"loc": ("query", field), "msg": message, "type": "value_error"}])


def _must_act_for(who: Any, user_id: str) -> None:
    """403 naming ``path.user_id`` unless the caller may act for ``user_id`` (a shopper session: only its
    own user), the same rule as ``GET /recommendations/{user_id}``: the reasons disclose history."""
    if who is not None and hasattr(who, "may_act_for") and not who.may_act_for(user_id):
        from aisys.gateway import GatewayError  # only reached with a gateway installed

        raise GatewayError(403, "forbidden", "a shopper session may only read its own user's recommendations "
                           "(path.user_id is not this session's user)",
                           fields=[{"field": "path.user_id", "message": "not this session's user"}])


def _no_guard(scope: str) -> Callable[..., Any]:
    async def allow() -> None:
        return None

    return allow


def storefront_router(
    catalogue: Callable[[], Catalogue | None],
    storefront_key: Callable[[], str | None],
    guard: Guard | None = None,
    overview: Overview | None = None,
    latest_report: ReportPath | None = None,
    recommend: Recommend | None = None,
    traffic: RequestWindow | None = None,
) -> APIRouter:
    """The storefront routes; ``guard(scope)`` gives the dependency that enforces a key scope.

    ``recommend`` is the serving layer's ranker (``OnlineService.recommend``); without it the
    shelf route answers 503. ``traffic`` is the window whose summary the overview carries.
    """
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

    @router.get("/catalogue")
    async def get_catalogue(
        who: Annotated[Any, Depends(require("storefront"))],
        category: Annotated[str | None, Query(max_length=128, description="Only this category id.")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Products per page (1..{MAX_PAGE}).")] = 24,
        offset: Annotated[int, Query(ge=0, description="Products to skip (a multiple of limit for pages).")] = 0,
    ) -> dict[str, Any]:
        """One page of products (most popular first) with the total, the next/previous page's
        offset (null at either end), and the categories with their names and sizes."""
        cat = catalogue()
        if cat is None:
            raise HTTPException(status_code=503, detail="the catalogue is not loaded yet")
        if category is not None and category not in cat.categories():
            raise _invalid("category", f"no category {category!r}; GET /catalogue lists them under 'categories'")
        page = cat.paged(category, limit, offset)
        if offset and offset >= page.total:
            raise _invalid("offset", f"offset {offset} is past the last product (total {page.total})")
        return {
            "categories": cat.category_list(),
            "items": [product_json(p) for p in page.items],
            "total": page.total,
            "offset": page.offset,
            "limit": page.limit,
            "next_offset": page.next_offset,
            "prev_offset": page.prev_offset,
            # User ids are not public: only an admin caller (the operator, a demo driver) gets them.
            "sample_users": cat.sample_users if who is not None and who.has("admin") else [],
        }

    @router.get("/shop/recommendations/{user_id}")
    async def get_shelf(
        who: Annotated[Any, Depends(require("recommend"))],
        user_id: Annotated[str, PathParam(min_length=1, max_length=128)],
        k: Annotated[int, Query(ge=1, le=MAX_SHELF, description=f"How many items (1..{MAX_SHELF}).")] = 8,
        viewing: Annotated[str | None, Query(max_length=128, description="The product on screen.")] = None,
        basket: Annotated[list[str], Query(max_length=MAX_BASKET, description="Item ids in the basket.")] = [],
    ) -> dict[str, Any]:
        """The shopper's recommendations as the shop shows them: never the product being viewed,
        never what is in the basket (see :mod:`aisys.storefront.shelf`), with names and pictures."""
        _must_act_for(who, user_id)
        if recommend is None:
            raise HTTPException(status_code=503, detail="no recommender is wired to the storefront")
        if any(len(item) > 128 for item in basket):
            raise _invalid("basket", "item ids are at most 128 characters")
        excluded = shelf_exclusions(viewing, basket)
        try:
            answer = await recommend(user_id, fetch_size(k, excluded))
        except LookupError as err:
            raise HTTPException(status_code=503, detail=str(err)) from None
        data = answer.model_dump(mode="json") if hasattr(answer, "model_dump") else dict(answer)
        cat = catalogue()
        items = []
        for item in product_shelf(data.get("items") or [], k, viewing, basket):
            product = cat.get(item["item_id"]) if cat is not None else None
            shown = product_json(product) if product is not None else {"name": item["item_id"]}
            items.append({**shown, **item, "reason": readable_reason(item.get("reason"), cat)})
        return {**data, "k": k, "items": items, "viewing": viewing, "excluded": sorted(excluded),
                "heading": SHELF_HEADINGS["product" if viewing else "browse"]}

    @router.get("/admin/overview", dependencies=[Depends(require("admin"))])
    async def admin_overview() -> dict[str, Any]:
        """Champion and challenger with lineage, retrain decisions, drift gauges and UI links."""
        if overview is None:
            raise HTTPException(status_code=503, detail="no operator overview is configured")
        data = await overview()
        if traffic is not None:
            data = {**data, "traffic": traffic.summary()}
        return data

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
    recommend: Recommend | None = None,
) -> RequestWindow:
    """Mount the page assets, include :func:`storefront_router` on ``app``, and time the app's
    requests for the operator view (returns that window)."""
    traffic = RequestWindow()
    app.add_middleware(TrafficMiddleware, window=traffic)
    app.mount("/shop/static", StaticFiles(directory=static_dir()), name="storefront-static")
    app.include_router(storefront_router(catalogue, storefront_key, guard, overview, latest_report, recommend, traffic))
    return traffic
