"""What a serving replica tells the outside: Prometheus metrics and the drift monitor's live feed.

Everything goes through :mod:`aisys.monitoring.metrics` helpers (they write to
the process's sink: Ray's inside a replica, nothing in a plain process), so no
metric is created here and nothing happens at import.

- :class:`RequestMetricsMiddleware` (pure ASGI) counts every HTTP request by its
  route *template* (``/recommendations/{user_id}``, never the raw path), method
  and status, with its latency. Refusals (401/403/413/429) pass through it too.
- :class:`ServingTelemetry` is what :class:`~aisys.serving.service.OnlineService`
  calls: fallbacks by reason, cache hits and misses, the served model version
  per arm (on load and on every swap), the score distribution of model answers,
  and, with a :class:`MonitorForwarder`, the live events and served lists for
  the drift monitor. Its methods never raise: telemetry must not fail a request.
- :class:`~aisys.serving.monitor_feed.MonitorForwarder` and
  :class:`~aisys.serving.monitor_feed.RayMonitorClient` (their own module) carry
  the feed to the drift monitor actor in batches, never blocking a request.

Only model answers are judged for online hit-rate and enter the score histogram:
popularity fallbacks are counted (``aisys_fallbacks_total``) but would mix the
share of cold users into the model's quality. A cache hit repeats a list the
monitor already holds, so it is not forwarded again.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Mapping

from aisys.data.lake import snapshot_time
from aisys.monitoring import metrics
from aisys.serving.monitor_feed import MonitorForwarder, RayMonitorClient

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from aisys.config import AppConfig

logger = logging.getLogger(__name__)

UNMATCHED_ROUTE = "unmatched"  # 404s: one label, whatever path was asked for
UNKNOWN_VERSION = "unknown"


# --- HTTP requests ---------------------------------------------------------------------------


def route_template(scope: Mapping[str, Any]) -> str:
    """The matched route's path template (``/recommendations/{user_id}``), or ``unmatched``.

    Starlette's router puts the matched route into the (shared) scope; the raw
    path is never used, so ids in paths cannot multiply the series.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED_ROUTE


class RequestMetricsMiddleware:
    """Pure ASGI middleware recording ``aisys_http_requests_total`` and the latency histogram."""

    def __init__(self, app: "ASGIApp", clock: Callable[[], float] = time.perf_counter) -> None:
        self.app = app
        self.clock = clock

    async def __call__(self, scope: "Scope", receive: "Receive", send: "Send") -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_note(message: "Message") -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            try:
                metrics.record_request(route_template(scope), scope.get("method", "GET"), status,
                                       self.clock() - started)
            except Exception:  # a metrics failure must not turn an answer into an error
                logger.debug("recording request metrics failed", exc_info=True)


def install_request_metrics(app: Any) -> None:
    """Add :class:`RequestMetricsMiddleware` to a Starlette/FastAPI ``app`` (before it starts).

    Added last, it is the outermost of the app's middlewares, so it also sees
    the answers the gateway's own middlewares give (413).
    """
    app.add_middleware(RequestMetricsMiddleware)


# --- what the service calls --------------------------------------------------------------------


def _never_raises(method: Callable) -> Callable:
    """Run a telemetry method; on any error count it, log the first of each kind, and return None."""

    @functools.wraps(method)
    def wrapper(self: "ServingTelemetry", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as err:
            self.errors[method.__name__] += 1
            if self.errors[method.__name__] == 1:
                logger.warning("telemetry %s failed (counted, not raised): %s: %s",
                               method.__name__, type(err).__name__, err)
            return None

    return wrapper


def _version(version: Any) -> str:
    return UNKNOWN_VERSION if version is None else str(version)


def item_category(recommender: Any, item_id: str) -> str | None:
    """The item's category in a recommender's bundle (None when unknown): live events often carry none,
    and the monitor compares categories with the training data's."""
    if recommender is None:
        return None
    index = recommender.item_index.get(item_id)
    categories = recommender.bundle.item_categories
    if index is None or len(categories) != len(recommender.bundle.item_ids):
        return None
    return categories[index]


class ServingTelemetry:
    """The replica's metrics and monitor feed, called by the service (see the module docstring).

    ``forwarder=None`` records metrics only. Every public method returns
    normally whatever goes wrong; failures are counted in ``errors``.
    """

    def __init__(self, *, model_name: str = "aisys-recommender", forwarder: MonitorForwarder | None = None) -> None:
        self.model_name = model_name
        self.forwarder = forwarder
        self.errors: Counter = Counter()

    @classmethod
    def for_replica(cls, cfg: "AppConfig") -> "ServingTelemetry":
        """Metrics always; the monitor feed (started here) when ``cfg.monitor.enabled``."""
        forwarder = None
        if cfg.monitor.enabled:
            forwarder = MonitorForwarder(RayMonitorClient.for_config(cfg)).start()
        telemetry = cls(model_name=cfg.registry.model_name, forwarder=forwarder)
        telemetry.canary_share(cfg.online.canary_share)
        return telemetry

    @_never_raises
    def canary_share(self, share: float) -> None:
        """Publish the share of users routed to the challenger."""
        metrics.set_canary_share(share)

    @_never_raises
    def model_changed(self, arm: str, old: Any, new: Any) -> None:
        """An arm now serves ``new`` instead of ``old`` (either may be None; ``ServedModel``-like)."""
        old_version = None if old is None else old.version
        new_version = None if new is None else new.version
        if old is not None and old_version != new_version:
            metrics.set_model_info(self._name(old), _version(old_version), arm, serving=False)
        if new is not None:
            metrics.set_model_info(self._name(new), _version(new_version), arm, serving=True)
            taken = snapshot_time(getattr(getattr(new, "info", None), "snapshot_id", None))
            if taken is not None:
                metrics.set_model_data_time(self._name(new), _version(new_version), arm, taken.timestamp())

    def _name(self, served: Any) -> str:
        info = getattr(served, "info", None)
        return getattr(info, "name", None) or self.model_name

    @_never_raises
    def cache_lookup(self, hit: bool) -> None:
        """Count one response-cache lookup."""
        metrics.record_cache_lookup(hit)

    @_never_raises
    def answered(self, answer: Any) -> None:
        """A freshly computed answer (``RecommendationsOut``-like): a fallback is counted by reason;
        a model answer's scores go to the histogram and its list to the monitor."""
        if answer.fallback:
            metrics.record_fallback(answer.fallback_reason or "unspecified")
            return
        version = _version(answer.model_version)
        scores = [item.score for item in answer.items]
        metrics.record_scores(scores, model_version=version, arm=answer.arm)
        if self.forwarder is not None and answer.items:
            self.forwarder.add_list({
                "user_id": answer.user_id,
                "items": [item.item_id for item in answer.items],
                "scores": scores,
                "model_version": answer.model_version,
                "arm": answer.arm,
            })

    @_never_raises
    def event_recorded(self, event: Any, recommender: Any = None) -> None:
        """A live event (``EventIn``-like) was accepted; its category defaults to the model's catalogue's."""
        if self.forwarder is None:
            return
        category = event.category if event.category is not None else item_category(recommender, event.item_id)
        self.forwarder.add_event({
            "user_id": event.user_id,
            "item_id": event.item_id,
            "event_type": event.event_type,
            "category": category,
            "price": event.price,
        })

    @_never_raises
    def rate_limiter_degraded(self) -> None:
        """One request was limited without the shared limiter (unreachable): ``aisys_rate_limiter_degraded_total``."""
        metrics.record_rate_limiter_degraded()

    def rate_limit_listener(self, key_tier: Callable[[str | None], str]) -> Callable[[str, str | None], None]:
        """A gateway listener counting 429s in ``aisys_rate_limited_total`` by ``key_tier(key_name)``."""

        @_never_raises
        def rate_limited(self: "ServingTelemetry", code: str, key_name: str | None) -> None:
            if code == "too_many_requests":
                metrics.record_rate_limited(key_tier(key_name))

        return functools.partial(rate_limited, self)

    def stats(self) -> dict[str, Any]:
        """The monitor feed's counters (``None`` without one) and telemetry errors."""
        forwarder = None
        if self.forwarder is not None:
            forwarder = self.forwarder.stats()
            client_stats = getattr(self.forwarder.client, "stats", None)
            if callable(client_stats):
                forwarder["client"] = client_stats()
        return {"monitor_feed": forwarder, "errors": dict(self.errors)}

    def close(self) -> None:
        """Flush and stop the monitor feed."""
        if self.forwarder is not None:
            self.forwarder.stop()


def gateway_key_tier(gateway: Any) -> Callable[[str | None], str]:
    """``key name -> 'storefront' | 'default'``: which of the gateway's limits the key is held to."""

    def tier(key_name: str | None) -> str:
        if key_name is None:
            return "default"
        for record in gateway.keys.records():
            if record.name == key_name:
                return "storefront" if "storefront" in record.scopes and "admin" not in record.scopes else "default"
        return "default"

    return tier
