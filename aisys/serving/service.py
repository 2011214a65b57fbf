"""The online service: canary arm -> session -> cache -> model within a budget -> popularity fallback.

No Ray and no FastAPI here: the routes call an :class:`OnlineService`, the
Serve deployment builds one per replica (with its ``@serve.batch`` scorer and
the shared session actor), and the unit tests build one around tiny models.

- **Models**: ``service.models`` maps an arm (``champion``/``challenger``) to a
  :class:`ServedModel`. :meth:`OnlineService.set_model` replaces the whole
  mapping in one assignment, so a swap is atomic: a request reads the mapping
  once and finishes on the version it started with.
- **Canary**: :func:`aisys.serving.canary.arm_for_user` picks the arm; without a
  challenger everybody gets the champion.
- **Budget**: the model call runs under ``asyncio.timeout(
  cfg.online.latency_budget_ms)``; an error or a timeout answers with the
  popularity fallback (``fallback_reason`` ``model_error`` / ``latency_budget``),
  counted in :class:`ServingCounters`. An error also marks the model unhealthy
  (``/healthz`` says ``degraded``) until a model call succeeds again.
- **Cache**: when a response cache is given, answers are cached under
  ``(user_id, k, model_version, arm, last_event_id, context)`` (context: the
  model's gap bucket for this request); a new event changes the
  last event id, so the user's next request misses; a cached list holding an
  item now out of stock is a miss too (stock changes take effect at once on
  every replica). Degraded answers (errors, timeouts) are never cached.
- **Telemetry**: a :class:`~aisys.serving.telemetry.ServingTelemetry` hears of
  every model change, cache lookup, computed answer and accepted event (metrics,
  and the drift monitor's feed in a replica); it never raises into a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Protocol

from aisys.config import OnlineConfig
from aisys.serving.api_models import EventAccepted, EventIn, Health, ModelOut, RecommendationsOut, ScoredItemOut
from aisys.serving.canary import CHALLENGER, CHAMPION, Arm, arm_for_user
from aisys.serving.event_log import EventLog
from aisys.serving.recommender import Recommendation, Recommender, ScoreRequest
from aisys.serving.rules import Inventory, excluded_items
from aisys.serving.session_store import SessionStore
from aisys.serving.telemetry import ServingTelemetry

logger = logging.getLogger(__name__)


class UnknownItem(LookupError):
    """An event names an item the catalogue does not hold (refused for shopper sessions)."""


REASON_MODEL_ERROR = "model_error"
REASON_LATENCY_BUDGET = "latency_budget"
DEGRADED_REASONS = frozenset({REASON_MODEL_ERROR, REASON_LATENCY_BUDGET})


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version and what the API says about it."""

    recommender: Recommender
    info: ModelOut

    @property
    def version(self) -> str | None:
        return self.info.version


Scorer = Callable[[ServedModel, ScoreRequest], Awaitable[Recommendation]]


async def threaded_scorer(served: ServedModel, request: ScoreRequest) -> Recommendation:
    """Score one request in a worker thread, so the event loop (and the budget timer) stay free."""
    return (await asyncio.to_thread(served.recommender.recommend_many, [request]))[0]


class ResponseCache(Protocol):
    """What the service needs from the gateway's cache."""

    def get(self, key: Any) -> Any: ...

    def put(self, key: Any, value: Any) -> None: ...


@dataclass
class ServingCounters:
    """Counts a metrics exporter reads (``snapshot()``); plain ints, updated on the event loop."""

    requests: Counter = field(default_factory=Counter)  # arm -> requests answered
    fallbacks: Counter = field(default_factory=Counter)  # (arm, reason) -> fallback answers
    cache_hits: Counter = field(default_factory=Counter)  # arm -> answers from the cache
    events: int = 0
    event_replays: int = 0  # POST /events whose event_id was already applied (a client or HAProxy retry)
    swaps: int = 0
    champion_refusals: int = 0  # champion versions the alias follower refused: moved by hand, not recorded

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy: ``{"requests": {arm: n}, "fallbacks": {"arm/reason": n}, ...}``."""
        return {
            "requests": dict(self.requests),
            "fallbacks": {f"{arm}/{reason}": n for (arm, reason), n in self.fallbacks.items()},
            "cache_hits": dict(self.cache_hits),
            "events": self.events,
            "event_replays": self.event_replays,
            "swaps": self.swaps,
            "champion_refusals": self.champion_refusals,
        }


class OnlineService:
    """Everything a replica serves from (see the module docstring)."""

    def __init__(
        self,
        *,
        store: SessionStore,
        event_log: EventLog,
        inventory: Inventory,
        online: OnlineConfig,
        champion: ServedModel | None = None,
        challenger: ServedModel | None = None,
        scorer: Scorer | None = None,
        cache: ResponseCache | None = None,
        telemetry: ServingTelemetry | None = None,
        catalogue: Callable[[], Any] | None = None,
    ) -> None:
        self.store = store
        # The operator's catalogue (``aisys.storefront.catalogue.Catalogue``, read through a callable because a
        # replica loads it after building the service): the only source of an event's category and price.
        self.catalogue = catalogue or (lambda: None)
        self.event_log = event_log
        self.inventory = inventory
        self.online = online
        self.scorer = scorer or threaded_scorer
        self.cache = cache
        # Without one given, metrics still go to the process's sink (none outside Ray).
        self.telemetry = telemetry if telemetry is not None else ServingTelemetry()
        self.counters = ServingCounters()
        self.models: Mapping[Arm, ServedModel] = {}
        self.model_healthy = True
        for arm, served in ((CHAMPION, champion), (CHALLENGER, challenger)):
            if served is not None:
                self.set_model(arm, served, count_swap=False)

    # --- models ----------------------------------------------------------------------

    def set_model(self, arm: Arm, served: ServedModel | None, *, count_swap: bool = True) -> None:
        """Serve ``served`` on ``arm`` from the next request on (``None`` removes the arm)."""
        models = dict(self.models)
        previous = models.get(arm)
        if served is None:
            models.pop(arm, None)
        else:
            models[arm] = served
        self.models = models  # one assignment: requests see the old or the new mapping, never half
        self.telemetry.model_changed(arm, previous, served)
        if count_swap:
            self.counters.swaps += 1
        if arm == CHAMPION:
            self.model_healthy = True  # a new champion gets a fresh chance

    def model_for(self, user_id: str) -> tuple[Arm, ServedModel | None]:
        """The arm and model that serve this user now."""
        models = self.models
        arm = arm_for_user(user_id, self.online.canary_share)
        if arm == CHALLENGER and CHALLENGER not in models:
            arm = CHAMPION
        return arm, models.get(arm)

    # --- requests --------------------------------------------------------------------

    async def recommend(self, user_id: str, k: int) -> RecommendationsOut:
        """The answer to ``GET /recommendations/{user_id}?k=``."""
        arm, served = self.model_for(user_id)
        if served is None:
            raise LookupError("no model is loaded; check the replica log and /healthz")
        session = await self.store.get(user_id)
        now = time.time()  # the request time: a context-aware model ranks by the gap since the user's last event
        out_of_stock = self.inventory.out_of_stock()
        key = None
        if self.cache is not None:
            # The fields of aisys.gateway.cache.CacheKey, in its order (built only for a cache: it costs a little).
            key = (user_id, k, served.version, arm, session.last_event_id, served.recommender.context_key(session, now))
            cached = self.cache.get(key)
            # A cached list holding an item that went out of stock since (on any replica) is a miss.
            hit = cached is not None and not any(item.item_id in out_of_stock for item in cached.items)
            self.telemetry.cache_lookup(hit)
            if hit:
                self.counters.requests[arm] += 1
                self.counters.cache_hits[arm] += 1
                return cached
        exclude = excluded_items(session, self.online.exclude) | out_of_stock
        request = ScoreRequest(session, k, exclude, now=now)
        rec = await self._score_within_budget(served, request, arm)
        self.counters.requests[arm] += 1
        if rec.fallback:
            self.counters.fallbacks[(arm, rec.fallback_reason)] += 1
        out = _response(user_id, k, rec, arm, served)
        self.telemetry.answered(out)
        if key is not None and rec.fallback_reason not in DEGRADED_REASONS:
            self.cache.put(key, out)
        return out

    async def _score_within_budget(self, served: ServedModel, request: ScoreRequest, arm: Arm) -> Recommendation:
        budget_s = self.online.latency_budget_ms / 1000.0
        try:
            # asyncio.timeout, not wait_for: the same deadline without a task per request (Python 3.11).
            async with asyncio.timeout(budget_s):
                rec = await self.scorer(served, request)
        except TimeoutError:
            logger.warning("model %s (%s) exceeded the %.0f ms budget: popularity answers",
                           served.version, arm, self.online.latency_budget_ms)
            return served.recommender.popular(request, REASON_LATENCY_BUDGET)
        except Exception:
            logger.exception("model %s (%s) failed: popularity answers", served.version, arm)
            if arm == CHAMPION:
                self.model_healthy = False
            return served.recommender.popular(request, REASON_MODEL_ERROR)
        if arm == CHAMPION and not rec.fallback:
            self.model_healthy = True
        return rec

    async def record_event(self, event: EventIn, sender: str | None = None,
                           catalogue_only: bool = False) -> EventAccepted:
        """``POST /events``: log the raw event, then update the shared session.

        ``category`` and ``price`` are replaced by the catalogue's (see
        :func:`event_with_catalogue_attributes`) and ``sender`` is recorded with
        the event, so one sender's events can be found and purged later.
        ``catalogue_only`` (shopper sessions) refuses an item the catalogue does
        not hold with :class:`UnknownItem`.
        """
        catalogue = self.catalogue()
        product = None if catalogue is None else catalogue.get(event.item_id)
        if catalogue_only and product is None:
            raise UnknownItem(f"item {ascii(event.item_id[:40])} is not in the catalogue")
        raw = event_with_catalogue_attributes(event.to_raw_event(), product, sender)
        # The drift monitor must see the catalogue's price too, not the client's.
        event = event.model_copy(update={"category": raw["category"], "price": raw["price"]})
        # Log first: if the write fails the request fails, and the session is
        # not ahead of what ingestion will see.
        await asyncio.to_thread(self.event_log.append, raw)
        _, applied = await self.store.apply(
            event.user_id, event.event_id, event.item_id, event.event_type, event.timestamp.timestamp()
        )
        champion = self.models.get(CHAMPION)
        known = champion is not None and champion.recommender.knows(event.item_id)
        if not applied:
            # A retry of an event already applied (HAProxy replays POSTs that were in flight on a dead replica):
            # the session ignored it, and so do the counters, the metrics and the drift monitor.
            self.counters.event_replays += 1
            return EventAccepted(event_id=event.event_id, known_item=known, replay=True)
        self.counters.events += 1
        for served in self.models.values():  # online item features (the ranking stage's popularity as of now)
            served.recommender.observe_event(event.item_id, event.timestamp.timestamp())
        self.telemetry.event_recorded(event, None if champion is None else champion.recommender)
        if not known:
            logger.info("event for an item the champion does not know (%r): stored, not scored yet", event.item_id)
        return EventAccepted(event_id=event.event_id, known_item=known)

    def set_stock(self, updates: Mapping[str, bool]) -> list[str]:
        """``PUT /admin/stock``: apply ``{item_id: in_stock}``; return the sorted out-of-stock ids.

        This replica's response cache is cleared (cached lists may hold an item
        now out of stock); other replicas' caches age out within their TTL.
        """
        gone = self.inventory.set_stock(updates)
        clear = getattr(self.cache, "clear", None)
        if clear is not None:
            clear()
        return sorted(gone)

    def health(self) -> Health:
        """``ok`` while the champion's model answers; ``degraded`` without one or after it failed."""
        models = self.models
        champion, challenger = models.get(CHAMPION), models.get(CHALLENGER)
        loaded = champion is not None and champion.recommender.model_loaded
        usable = loaded and self.model_healthy
        return Health(
            status="ok" if usable else "degraded",
            model_loaded=loaded,
            model_version=champion.version if champion else None,
            challenger_version=challenger.version if challenger else None,
        )

    def model_info(self, arm: Arm = CHAMPION) -> ModelOut:
        """The ``/model`` description of an arm's model (empty when none)."""
        served = self.models.get(arm)
        return served.info if served else ModelOut()


def event_with_catalogue_attributes(raw: dict[str, Any], product: Any, sender: str | None) -> dict[str, Any]:
    """The raw event with ``category``/``price`` from ``product`` (a catalogue ``Product``, or None) and ``sender``.

    Whatever the client sent for category and price is dropped: the catalogue
    is built from collected events, so a client-chosen price would become the
    shop's price at the next snapshot. An item the catalogue does not know
    gets neither (null), never the client's.
    """
    out = dict(raw)
    out["category"] = None if product is None else product.category
    out["price"] = None if product is None else product.price
    out["sender"] = sender
    return out


def _response(user_id: str, k: int, rec: Recommendation, arm: Arm, served: ServedModel) -> RecommendationsOut:
    return RecommendationsOut(
        user_id=user_id,
        k=k,
        items=[ScoredItemOut(item_id=i.item_id, score=i.score, category=i.category, reason=i.reason) for i in rec.items],
        fallback=rec.fallback,
        fallback_reason=rec.fallback_reason,
        model_version=served.version,
        arm=arm,
    )
