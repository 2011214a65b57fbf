"""The HTTP API as a FastAPI app: recommendations, event collection, health, model info.

:func:`build_fastapi_app` wires the routes to a :class:`ServingState` (the
recommender, the event log and the served model's description). The Serve
deployment builds one per replica; unit tests build one around a tiny
untrained bundle and call it with ``TestClient``, no Ray involved.

Routes::

    GET  /recommendations/{user_id}?k=10   -> RecommendationsOut
    POST /events                           -> 202 EventAccepted
    GET  /healthz                          -> Health
    GET  /model                            -> ModelOut
"""

# No `from __future__ import annotations` here: FastAPI must evaluate the route
# annotations, and the `k` bound is a closure variable of the router factory.
from dataclasses import dataclass, field
from typing import Annotated, Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from aisys.serving.api_models import (
    MAX_ID_LENGTH,
    EventAccepted,
    EventIn,
    Health,
    ModelOut,
    RecommendationsOut,
    ScoredItemOut,
)
from aisys.serving.errors import install_error_handlers
from aisys.serving.event_log import EventLog
from aisys.serving.recommender import Recommendation, Recommender

RecommendFn = Callable[[str, int], Awaitable[Recommendation]]


@dataclass
class ServingState:
    """What the routes serve from.

    ``recommend`` lets the Serve deployment route scoring through its
    ``@serve.batch`` method; without it the routes call
    ``recommender.recommend`` in a worker thread (keeps the event loop free).
    """

    recommender: Recommender | None
    event_log: EventLog
    model: ModelOut = field(default_factory=ModelOut)
    recommend: RecommendFn | None = None


def _serving_state(request: Request) -> ServingState:
    return request.app.state.serving


StateDep = Annotated[ServingState, Depends(_serving_state)]


def _require_recommender(state: ServingState) -> Recommender:
    if state.recommender is None:
        raise HTTPException(status_code=503, detail="no model is loaded; check the replica log and /healthz")
    return state.recommender


def _recommendations_router(default_k: int, max_k: int) -> APIRouter:
    router = APIRouter(tags=["recommendations"])

    @router.get("/recommendations/{user_id}", response_model=RecommendationsOut)
    async def get_recommendations(
        state: StateDep,
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH)],
        k: Annotated[int, Query(ge=1, le=max_k, description=f"How many items (1..{max_k}).")] = default_k,
    ) -> RecommendationsOut:
        """Top-k items for a user; unknown users get popular items with ``fallback=true``."""
        recommender = _require_recommender(state)
        if state.recommend is not None:
            rec = await state.recommend(user_id, k)
        else:
            rec = await run_in_threadpool(recommender.recommend, user_id, k)
        return RecommendationsOut(
            user_id=user_id,
            k=k,
            items=[ScoredItemOut(item_id=i.item_id, score=i.score, category=i.category) for i in rec.items],
            fallback=rec.fallback,
            reason=rec.reason,
            model_version=state.model.version,
        )

    return router


def _events_router() -> APIRouter:
    router = APIRouter(tags=["events"])

    @router.post("/events", status_code=202, response_model=EventAccepted)
    async def post_event(state: StateDep, event: EventIn) -> EventAccepted:
        """Accept one interaction: log it for ingestion, then update the user's online history."""
        recommender = _require_recommender(state)
        # Log first: if the write fails the request fails, and the history is
        # not ahead of what ingestion will see.
        await run_in_threadpool(state.event_log.append, event.to_raw_event())
        known = recommender.record_event(event.user_id, event.item_id, event.event_type)
        return EventAccepted(event_id=event.event_id, known_item=known)

    return router


def _ops_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", response_model=Health)
    async def healthz(state: StateDep) -> Health:
        """``ok`` when a model is serving; ``degraded`` when only popularity (or nothing) is."""
        loaded = state.recommender is not None and state.recommender.model_loaded
        return Health(status="ok" if loaded else "degraded", model_loaded=loaded, model_version=state.model.version)

    @router.get("/model", response_model=ModelOut)
    async def model_info(state: StateDep) -> ModelOut:
        """The served model: registry name/version/alias, run, data snapshot, metrics."""
        return state.model

    return router


def build_fastapi_app(state: ServingState, *, default_k: int = 10, max_k: int = 100) -> FastAPI:
    """A FastAPI app serving ``state`` with the routes above and JSON errors everywhere.

    ``k`` is bounded by ``1..max_k`` at the HTTP layer (a 422 naming ``query.k``).
    """
    if not 1 <= default_k <= max_k:
        raise ValueError(f"default_k ({default_k}) must be within 1..max_k ({max_k})")
    app = FastAPI(title="aisys recommender", version="1")
    app.state.serving = state
    install_error_handlers(app)
    app.include_router(_recommendations_router(default_k, max_k))
    app.include_router(_events_router())
    app.include_router(_ops_router())
    return app
