"""The HTTP API as a FastAPI app over an :class:`~aisys.serving.service.OnlineService`.

:func:`build_fastapi_app` wires the routes to a service. The Serve deployment
builds one per replica; unit tests build one around tiny untrained bundles and
call it with ``TestClient``, no Ray involved.

Routes (scope each needs when a gateway is plugged in)::

    GET  /recommendations/{user_id}?k=10   recommend  -> RecommendationsOut
    POST /events                           events     -> 202 EventAccepted
    GET  /model                            recommend  -> ModelOut
    PUT  /admin/stock                      admin      -> StockOut
    GET  /admin/counters                   admin      -> serving counters
    GET  /healthz                          (open)     -> Health
    POST /shop/session                     (open, per-address limit) -> a shopper session
    POST /sessions                         sessions   -> a shopper session for a named user

A shopper session (a browser's credential) may read recommendations and post
events only for the user its token is bound to: 403 otherwise, naming the field.

With ``gateway`` (:class:`aisys.gateway.Gateway`), every route but ``/healthz``
depends on ``gateway.require(scope)``, ``gateway.install(app)`` adds its
middleware, and ``gateway.cache`` (when set) becomes the service's response cache.

FastAPI's ``/openapi.json``, ``/docs`` and ``/redoc`` are served only with
``api_docs`` (``gateway.api_docs``: on for local development, off on a cluster).
The OpenAPI documents every 4xx as the one error shape (:class:`ErrorOut`),
not FastAPI's default ``HTTPValidationError``, which this API never returns.
"""

# No `from __future__ import annotations` here: FastAPI must evaluate the route
# annotations, and the `k` bound is a closure variable of the router factory.
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError

from aisys.serving.api_docs import install_offline_docs
from aisys.serving.api_models import (
    MAX_ID_LENGTH,
    ErrorOut,
    EventAccepted,
    EventIn,
    Health,
    ModelOut,
    RecommendationsOut,
    StockIn,
    StockOut,
)
from aisys.gateway.errors import install_error_handlers
from aisys.serving.heap import freeze_long_lived_heap
from aisys.serving.service import OnlineService, UnknownItem


async def _service(request: Request) -> OnlineService:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per request
    # (profiled in a replica under load: ~10% of its samples, a thread started per request; docs/serving.md)
    return request.app.state.service


ServiceDep = Annotated[OnlineService, Depends(_service)]

# Declared on the app, so every route (the storefront's too) documents its client errors in the shape
# `aisys.gateway.errors` really sends; "4XX" also keeps FastAPI from adding its HTTPValidationError for 422.
ERROR_RESPONSES: dict = {
    "4XX": {"model": ErrorOut, "description": "Client error (401, 403, 404, 413, 422, 429...) in the one error shape."}
}
DOCS_URLS = {"openapi_url": "/openapi.json", "docs_url": "/docs", "redoc_url": "/redoc"}


def _guard(gateway: Any, scope: str) -> list:
    """The route dependencies enforcing ``scope`` (none without a gateway)."""
    return [] if gateway is None else [Depends(gateway.require(scope))]


def _caller(gateway: Any, scope: str) -> Any:
    """A dependency enforcing ``scope`` that returns the caller's Principal (None without a gateway)."""
    if gateway is None:
        async def nobody() -> None:
            return None

        return nobody
    return gateway.require(scope)


def _must_act_for(who: Any, user_id: str, field: str) -> None:
    """403 naming ``field`` unless ``who`` may act for ``user_id`` (a shopper session: only its own user)."""
    if who is not None and not who.may_act_for(user_id):
        from aisys.gateway import GatewayError  # only reached with a gateway installed

        message = "a shopper session may only read and write its own user's data"
        raise GatewayError(403, "forbidden", f"{message} ({field} is not this session's user)",
                           fields=[{"field": field, "message": "not this session's user"}])


def _recommendations_router(default_k: int, max_k: int, gateway: Any) -> APIRouter:
    router = APIRouter(tags=["recommendations"])
    caller = _caller(gateway, "recommend")

    @router.get("/recommendations/{user_id}", response_model=RecommendationsOut)
    async def get_recommendations(
        service: ServiceDep,
        who: Annotated[Any, Depends(caller)],
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH)],
        k: Annotated[int, Query(ge=1, le=max_k, description=f"How many items (1..{max_k}).")] = default_k,
    ) -> RecommendationsOut:
        """Top-k items with a reason each; unknown users, model errors and slow models get popularity, flagged.

        A shopper session may ask only for its own user (403 otherwise): the reasons disclose history.
        """
        _must_act_for(who, user_id, "path.user_id")
        try:
            return await service.recommend(user_id, k)
        except LookupError as err:
            raise HTTPException(status_code=503, detail=str(err)) from None

    @router.get("/model", response_model=ModelOut, dependencies=_guard(gateway, "recommend"))
    async def model_info(service: ServiceDep) -> ModelOut:
        """The champion: registry name/version/alias, run, data snapshot, metrics."""
        return service.model_info()

    return router


def _events_router(gateway: Any) -> APIRouter:
    router = APIRouter(tags=["events"])
    caller = _caller(gateway, "events")

    @router.post("/events", status_code=202, response_model=EventAccepted)
    async def post_event(service: ServiceDep, who: Annotated[Any, Depends(caller)], event: EventIn) -> EventAccepted:
        """Accept one interaction: log it for ingestion, then update the user's shared session.

        ``category`` and ``price`` are taken from the operator's catalogue, never from the body (sent values
        are ignored). A shopper session may post only for its own user (403) and only items in the
        catalogue (422 on ``body.item_id``).
        """
        _must_act_for(who, event.user_id, "body.user_id")
        shopper = who is not None and who.user_id is not None
        try:
            return await service.record_event(event, sender=None if who is None else who.sender,
                                              catalogue_only=shopper)
        except UnknownItem as err:
            raise RequestValidationError(
                [{"loc": ("body", "item_id"), "msg": str(err), "type": "value_error"}]
            ) from None

    return router


def _admin_router(gateway: Any) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=_guard(gateway, "admin"))

    @router.put("/stock", response_model=StockOut)
    async def put_stock(service: ServiceDep, body: StockIn) -> StockOut:
        """Mark items in or out of stock; out-of-stock items are never recommended."""
        return StockOut(out_of_stock=service.set_stock(body.items))

    @router.get("/counters")
    async def counters(service: ServiceDep) -> dict[str, Any]:
        """This replica's request, fallback (per arm and reason), cache and swap counters."""
        return service.counters.snapshot()

    return router


def _ops_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", response_model=Health)
    async def healthz(service: ServiceDep) -> Health:
        """``ok`` when the champion model answers; ``degraded`` when only popularity can."""
        return service.health()

    return router


@asynccontextmanager
async def _frozen_heap_lifespan(app: FastAPI):
    """At start-up, before the first request: everything the server built is long-lived, freeze it."""
    freeze_long_lived_heap()
    yield


def build_fastapi_app(
    service: OnlineService,
    *,
    default_k: int = 10,
    max_k: int = 100,
    gateway: Any = None,
    api_docs: bool | None = None,
    freeze_heap: bool = False,
) -> FastAPI:
    """A FastAPI app serving ``service``, JSON errors everywhere, optionally behind ``gateway``.

    ``k`` is bounded by ``1..max_k`` at the HTTP layer (a 422 naming ``query.k``).
    ``api_docs`` (default: ``gateway.settings.api_docs``, else True) mounts
    ``/openapi.json``, ``/docs`` and ``/redoc``; without them those paths are a
    404 (``app.openapi()`` still builds the schema in-process).
    ``freeze_heap`` (``serve.freeze_heap``): when the server starts the app (its ASGI lifespan, which uvicorn
    and Ray Serve both run), the heap built so far is frozen out of the cyclic collector's full collections
    (:func:`aisys.serving.heap.freeze_long_lived_heap`).
    """
    if not 1 <= default_k <= max_k:
        raise ValueError(f"default_k ({default_k}) must be within 1..max_k ({max_k})")
    if api_docs is None:
        api_docs = bool(getattr(getattr(gateway, "settings", None), "api_docs", True))
    docs = DOCS_URLS if api_docs else dict.fromkeys(DOCS_URLS)
    # FastAPI's own /docs and /redoc load their assets from a CDN; aisys.serving.api_docs serves them offline.
    app = FastAPI(title="aisys recommender", version="1", responses=ERROR_RESPONSES,
                  lifespan=_frozen_heap_lifespan if freeze_heap else None,
                  **{**docs, "docs_url": None, "redoc_url": None})
    if api_docs:
        install_offline_docs(app, DOCS_URLS["docs_url"], DOCS_URLS["redoc_url"])
    app.state.service = service
    install_error_handlers(app)
    if gateway is not None:
        gateway.install(app)
        if service.cache is None and getattr(gateway, "cache", None) is not None:
            service.cache = gateway.cache
    if gateway is not None:
        from aisys.gateway.session_routes import session_router

        app.include_router(session_router(gateway))
    app.include_router(_recommendations_router(default_k, max_k, gateway))
    app.include_router(_events_router(gateway))
    app.include_router(_admin_router(gateway))
    app.include_router(_ops_router())
    return app
