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
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request

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
from aisys.serving.errors import install_error_handlers
from aisys.serving.service import OnlineService


def _service(request: Request) -> OnlineService:
    return request.app.state.service


ServiceDep = Annotated[OnlineService, Depends(_service)]

# Declared on the app, so every route (the storefront's too) documents its client errors in the shape
# `aisys.serving.errors` really sends; "4XX" also keeps FastAPI from adding its HTTPValidationError for 422.
ERROR_RESPONSES: dict = {
    "4XX": {"model": ErrorOut, "description": "Client error (401, 403, 404, 413, 422, 429...) in the one error shape."}
}
DOCS_URLS = {"openapi_url": "/openapi.json", "docs_url": "/docs", "redoc_url": "/redoc"}


def _guard(gateway: Any, scope: str) -> list:
    """The route dependencies enforcing ``scope`` (none without a gateway)."""
    return [] if gateway is None else [Depends(gateway.require(scope))]


def _recommendations_router(default_k: int, max_k: int, gateway: Any) -> APIRouter:
    router = APIRouter(tags=["recommendations"], dependencies=_guard(gateway, "recommend"))

    @router.get("/recommendations/{user_id}", response_model=RecommendationsOut)
    async def get_recommendations(
        service: ServiceDep,
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH)],
        k: Annotated[int, Query(ge=1, le=max_k, description=f"How many items (1..{max_k}).")] = default_k,
    ) -> RecommendationsOut:
        """Top-k items with a reason each; unknown users, model errors and slow models get popularity, flagged."""
        try:
            return await service.recommend(user_id, k)
        except LookupError as err:
            raise HTTPException(status_code=503, detail=str(err)) from None

    @router.get("/model", response_model=ModelOut)
    async def model_info(service: ServiceDep) -> ModelOut:
        """The champion: registry name/version/alias, run, data snapshot, metrics."""
        return service.model_info()

    return router


def _events_router(gateway: Any) -> APIRouter:
    router = APIRouter(tags=["events"], dependencies=_guard(gateway, "events"))

    @router.post("/events", status_code=202, response_model=EventAccepted)
    async def post_event(service: ServiceDep, event: EventIn) -> EventAccepted:
        """Accept one interaction: log it for ingestion, then update the user's shared session."""
        return await service.record_event(event)

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


def build_fastapi_app(
    service: OnlineService,
    *,
    default_k: int = 10,
    max_k: int = 100,
    gateway: Any = None,
    api_docs: bool | None = None,
) -> FastAPI:
    """A FastAPI app serving ``service``, JSON errors everywhere, optionally behind ``gateway``.

    ``k`` is bounded by ``1..max_k`` at the HTTP layer (a 422 naming ``query.k``).
    ``api_docs`` (default: ``gateway.settings.api_docs``, else True) mounts
    ``/openapi.json``, ``/docs`` and ``/redoc``; without them those paths are a
    404 (``app.openapi()`` still builds the schema in-process).
    """
    if not 1 <= default_k <= max_k:
        raise ValueError(f"default_k ({default_k}) must be within 1..max_k ({max_k})")
    if api_docs is None:
        api_docs = bool(getattr(getattr(gateway, "settings", None), "api_docs", True))
    docs = DOCS_URLS if api_docs else dict.fromkeys(DOCS_URLS)
    app = FastAPI(title="aisys recommender", version="1", responses=ERROR_RESPONSES, **docs)
    app.state.service = service
    install_error_handlers(app)
    if gateway is not None:
        gateway.install(app)
        if service.cache is None and getattr(gateway, "cache", None) is not None:
            service.cache = gateway.cache
    app.include_router(_recommendations_router(default_k, max_k, gateway))
    app.include_router(_events_router(gateway))
    app.include_router(_admin_router(gateway))
    app.include_router(_ops_router())
    return app
