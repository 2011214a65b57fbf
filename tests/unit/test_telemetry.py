"""Serving telemetry without Ray: the monitor feed's buffer and flush, the request middleware, the service hooks."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

from aisys.config import OnlineConfig
from aisys.gateway.cache import ResponseCache
from aisys.gateway.keys import InMemoryKeyStore, KeyRecord
from aisys.monitoring import metrics
from aisys.serving.api_models import EventIn, ModelOut
from aisys.serving.event_log import InMemoryEventLog
from aisys.serving.recommender import Recommender
from aisys.serving.rules import InMemoryInventory
from aisys.serving.service import OnlineService, ServedModel
from aisys.serving.session_store import InMemorySessionStore, UserSession
from aisys.serving.telemetry import (
    MonitorForwarder,
    RayMonitorClient,
    RequestMetricsMiddleware,
    ServingTelemetry,
    gateway_key_tier,
)
from tests.unit.test_recommender import tiny_bundle


class FakeMonitor:
    """A monitor client that keeps every batch; ``ready`` and failures are switchable."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[dict]]] = []
        self.is_ready = True
        self.fail_kinds: set[str] = set()
        self.sent = threading.Event()

    def ready(self) -> bool:
        return self.is_ready

    def send(self, kind, batch):
        if kind in self.fail_kinds:
            raise RuntimeError("cannot pickle this")
        self.batches.append((kind, list(batch)))
        self.sent.set()

    def items(self) -> list[tuple[str, dict]]:
        return [(kind, item) for kind, batch in self.batches for item in batch]


@pytest.fixture
def sink():
    memory = metrics.InMemoryMetricsSink()
    metrics.set_metrics_sink(memory)
    yield memory
    metrics.set_metrics_sink(None)


def ev(n: int) -> dict:
    return {"user_id": f"u{n}", "item_id": f"i{n}"}


def served_list(n: int) -> dict:
    return {"user_id": f"u{n}", "items": [f"i{n}"]}


# --- the forwarder ---------------------------------------------------------------------------


def test_flush_sends_in_arrival_order_as_runs_of_one_kind_cut_at_the_batch_size():
    monitor = FakeMonitor()
    feed = MonitorForwarder(monitor, batch_size=2, flush_every_s=60, max_buffered=100)
    # A list, then the events that judge it: the monitor must see the list first.
    added = [("lists", served_list(0)), ("events", ev(1)), ("events", ev(2)), ("events", ev(3)), ("lists", served_list(4))]
    for kind, item in added:
        assert (feed.add_event if kind == "events" else feed.add_list)(item)
    assert monitor.batches == [] and feed.buffered == 5  # nothing leaves before a flush

    assert feed.flush() == 5
    assert [(kind, len(batch)) for kind, batch in monitor.batches] == [("lists", 1), ("events", 2), ("events", 1),
                                                                       ("lists", 1)]
    assert monitor.items() == added
    assert feed.stats() | {"buffered": feed.buffered} == {
        "buffered": 0, "sent": {"lists": 2, "events": 3}, "dropped": {}, "batches": 4, "send_errors": 0,
        "held_back": 0,
    }
    assert feed.flush() == 0 and len(monitor.batches) == 4  # an empty flush sends nothing


def test_a_full_buffer_drops_new_items_and_counts_them_without_waiting():
    monitor = FakeMonitor()
    feed = MonitorForwarder(monitor, batch_size=2, flush_every_s=60, max_buffered=3)
    started = time.perf_counter()
    accepted = [feed.add_event(ev(n)) for n in range(3)] + [feed.add_list(served_list(3)), feed.add_event(ev(4))]
    assert time.perf_counter() - started < 1.0  # not waiting for the flush, due only in 60 s
    assert accepted == [True, True, True, False, False]
    assert dict(feed.dropped) == {"lists": 1, "events": 1}
    feed.flush()
    assert [item["user_id"] for _, item in monitor.items()] == ["u0", "u1", "u2"]  # the oldest were kept


def test_while_the_monitor_is_not_ready_items_wait_in_order_and_overflow_is_dropped():
    monitor = FakeMonitor()
    monitor.is_ready = False
    feed = MonitorForwarder(monitor, batch_size=2, flush_every_s=60, max_buffered=4)
    for n in range(3):
        feed.add_event(ev(n))
    assert feed.flush() == 0 and feed.held_back == 1 and feed.buffered == 3
    feed.add_list(served_list(3))
    assert not feed.add_event(ev(4))  # 4 held: full
    monitor.is_ready = True
    assert feed.flush() == 4
    assert [item["user_id"] for _, item in monitor.items()] == ["u0", "u1", "u2", "u3"]
    assert dict(feed.dropped) == {"events": 1}


def test_a_batch_that_fails_to_send_is_dropped_and_counted_and_the_rest_still_goes():
    monitor = FakeMonitor()
    monitor.fail_kinds = {"lists"}
    feed = MonitorForwarder(monitor, batch_size=10, flush_every_s=60)
    feed.add_list(served_list(0))
    feed.add_event(ev(1))
    assert feed.flush() == 1  # never raises
    assert monitor.items() == [("events", ev(1))]
    assert feed.send_errors == 1 and dict(feed.dropped) == {"lists": 1} and feed.buffered == 0


def test_the_background_thread_flushes_on_size_on_time_and_on_stop():
    by_size = FakeMonitor()
    feed = MonitorForwarder(by_size, batch_size=3, flush_every_s=60).start()
    try:
        for n in range(3):
            feed.add_event(ev(n))
        assert by_size.sent.wait(5), "a full batch was not sent before the timer"
        assert [item for _, item in by_size.items()] == [ev(0), ev(1), ev(2)]
    finally:
        feed.stop()

    by_time = FakeMonitor()
    feed = MonitorForwarder(by_time, batch_size=100, flush_every_s=0.05).start()
    try:
        feed.add_event(ev(7))
        assert by_time.sent.wait(5), "a lone item was not sent after flush_every_s"
    finally:
        feed.stop()

    on_stop = FakeMonitor()
    feed = MonitorForwarder(on_stop, batch_size=100, flush_every_s=60).start()
    feed.add_list(served_list(1))
    feed.stop()
    assert on_stop.items() == [("lists", served_list(1))]


def test_the_ray_client_retries_an_unreachable_monitor_only_after_a_pause():
    now = [100.0]
    calls = []

    class Handle:
        class observe_events:  # noqa: N801 - mimics an actor method
            @staticmethod
            def remote(batch):
                calls.append(batch)
                return None

    def get_handle():
        calls.append("get")
        if len(calls) == 1:
            raise ConnectionError("no GCS")
        return Handle()

    client = RayMonitorClient(get_handle, retry_after_s=5, clock=lambda: now[0])
    assert client.ready() is False and client.stats()["last_error"] == "ConnectionError: no GCS"
    now[0] += 1
    assert client.ready() is False and calls == ["get"]  # not asked again within the pause
    with pytest.raises(ConnectionError):
        client.send("events", [ev(0)])
    now[0] += 5
    assert client.ready() is True
    client.send("events", [ev(1)])
    assert calls == ["get", "get", [ev(1)]]


# --- HTTP requests --------------------------------------------------------------------------


def test_requests_are_counted_by_route_template_method_and_status(sink):
    app = FastAPI()

    @app.get("/recommendations/{user_id}")
    async def recs(user_id: str):
        if user_id == "forbidden":
            raise HTTPException(status_code=403, detail="no")
        if user_id == "boom":
            raise RuntimeError("model exploded")
        return {"user_id": user_id}

    app.add_middleware(RequestMetricsMiddleware)
    client = TestClient(app, raise_server_exceptions=False)
    for user in ("alice", "bob", "forbidden", "boom"):
        client.get(f"/recommendations/{user}")
    client.get("/no/such/thing/42")
    client.post("/recommendations/alice")

    route = "/recommendations/{user_id}"
    assert sink.value("aisys_http_requests_total", route=route, method="GET", status="200") == 2
    assert sink.value("aisys_http_requests_total", route=route, method="GET", status="403") == 1
    assert sink.value("aisys_http_requests_total", route=route, method="GET", status="500") == 1
    assert sink.value("aisys_http_requests_total", route=route, method="POST", status="405") == 1
    assert sink.value("aisys_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert not any("alice" in str(key) for key in sink.counters)  # raw paths never become labels
    latencies = sink.observations[("aisys_http_request_duration_seconds",
                                   (("method", "GET"), ("route", route), ("status", "200")))]
    assert len(latencies) == 2 and all(0 <= s < 5 for s in latencies)


# --- the service's hooks --------------------------------------------------------------------


def served(version: str) -> ServedModel:
    info = ModelOut(name="aisys-recommender", version=version, alias="champion")
    return ServedModel(recommender=Recommender(tiny_bundle()), info=info)


def make_service(feed: MonitorForwarder | None, cache: ResponseCache | None = None) -> OnlineService:
    store = InMemorySessionStore()
    asyncio.run(store.bulk_load({"alice": UserSession(items=("i1", "i2"), last_event_id="e0")}, "snap-1"))
    return OnlineService(
        store=store, event_log=InMemoryEventLog(), inventory=InMemoryInventory(), online=OnlineConfig(),
        champion=served("3"), cache=cache, telemetry=ServingTelemetry(forwarder=feed),
    )


def test_the_service_reports_answers_fallbacks_cache_events_and_swaps(sink):
    monitor = FakeMonitor()
    feed = MonitorForwarder(monitor, batch_size=100, flush_every_s=60)
    service = make_service(feed, ResponseCache(ttl_s=60, max_entries=10))
    assert sink.value("aisys_model_info", model_name="aisys-recommender", model_version="3", arm="champion") == 1.0

    first = asyncio.run(service.recommend("alice", 3))
    again = asyncio.run(service.recommend("alice", 3))  # same session: from the cache
    assert again == first and first.fallback is False
    stranger = asyncio.run(service.recommend("zed", 2))
    assert stranger.fallback_reason == "unknown_user"
    asyncio.run(service.record_event(EventIn(user_id="alice", item_id="i5", event_type="view")))

    assert sink.value("aisys_cache_lookups_total", result="miss") == 2
    assert sink.value("aisys_cache_lookups_total", result="hit") == 1
    assert sink.value("aisys_fallbacks_total", reason="unknown_user") == 1
    scores = sink.observations[("aisys_recommendation_score", (("arm", "champion"), ("model_version", "3")))]
    assert scores == pytest.approx([metrics.logistic(item.score) for item in first.items])  # once, not per hit

    feed.flush()
    assert monitor.items() == [
        ("lists", {"user_id": "alice", "items": [i.item_id for i in first.items],
                   "scores": [i.score for i in first.items], "model_version": "3", "arm": "champion"}),
        # The event carried no category: the model's catalogue gives it (i5 -> c2).
        ("events", {"user_id": "alice", "item_id": "i5", "event_type": "view", "category": "c2", "price": None}),
    ]

    service.set_model("champion", served("4"))
    assert sink.value("aisys_model_info", model_name="aisys-recommender", model_version="3", arm="champion") == 0.0
    assert sink.value("aisys_model_info", model_name="aisys-recommender", model_version="4", arm="champion") == 1.0


def test_telemetry_failures_never_reach_the_request(sink):
    class BrokenFeed(MonitorForwarder):
        def add_list(self, served):
            raise RuntimeError("buffer exploded")

        def add_event(self, event):
            raise RuntimeError("buffer exploded")

    service = make_service(BrokenFeed(FakeMonitor()))
    answer = asyncio.run(service.recommend("alice", 3))
    accepted = asyncio.run(service.record_event(EventIn(user_id="alice", item_id="i5", event_type="view")))
    assert len(answer.items) == 3 and accepted.known_item is True
    assert service.telemetry.stats()["errors"] == {"answered": 1, "event_recorded": 1}


def test_rate_limited_requests_are_counted_by_the_key_tier(sink):
    def record(name: str, scopes: tuple[str, ...]) -> KeyRecord:
        return KeyRecord(key_id=name, name=name, digest="0" * 64, scopes=scopes, created_at="2026-01-01")

    class FakeGateway:
        keys = InMemoryKeyStore([record("shop", ("storefront",)), record("ops", ("admin", "storefront"))])

    listener = ServingTelemetry().rate_limit_listener(gateway_key_tier(FakeGateway()))
    for code, name in [("too_many_requests", "shop"), ("too_many_requests", "shop"), ("too_many_requests", "ops"),
                       ("unauthorized", None), ("forbidden", "shop")]:
        listener(code, name)
    assert sink.value("aisys_rate_limited_total", scope="storefront") == 2
    assert sink.value("aisys_rate_limited_total", scope="default") == 1


def test_importing_the_service_and_its_telemetry_imports_no_ray():
    code = ("import sys, aisys.serving.service, aisys.serving.telemetry; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
