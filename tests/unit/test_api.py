"""The HTTP API through FastAPI's TestClient around a real OnlineService (no Ray).

Covers the routes, business rules over HTTP, the fallback on a failing or slow
model, canary arms, the response cache, swaps, and the one error shape.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from aisys.config import OnlineConfig
from aisys.models.sasrec import build_model
from aisys.serving.api_models import EventIn, ModelOut
from aisys.serving.event_log import EventLog, InMemoryEventLog, JsonlEventLog
from aisys.serving.recommender import Recommender
from aisys.serving.routes import build_fastapi_app
from aisys.serving.rules import RECENT_REASON, InMemoryInventory
from aisys.serving.service import OnlineService, ServedModel
from aisys.serving.session_store import InMemorySessionStore, UserSession
from tests.unit.test_recommender import N_ITEMS, tiny_bundle

DEFAULT_K = 3
MAX_K = N_ITEMS


def served(version: str = "3", model=None, with_weights: bool = True, seed: int = 0) -> ServedModel:
    bundle = tiny_bundle(with_weights=with_weights)
    if seed:  # a different model over the same catalogue
        torch.manual_seed(seed)
        from aisys.models.sasrec import SASRec, SASRecConfig

        bundle.state_dict = SASRec(SASRecConfig(**bundle.model_config)).state_dict()
    info = ModelOut(name="aisys-recommender", version=version, alias="champion", run_id="run-1",
                    snapshot_id="snap-1", metrics={"hit_rate@10": 0.5},
                    lineage={"snapshot_id": "snap-1", "run_id": "run-1"})
    return ServedModel(recommender=Recommender(bundle, model=model), info=info)


def make_service(champion: ServedModel | None = None, event_log: EventLog | None = None, **online) -> OnlineService:
    store = InMemorySessionStore()
    alice = UserSession(items=("i1", "i2", "i3"), last_event_id="snap-e1", purchased=frozenset({"i2"}))
    asyncio.run(store.bulk_load({"alice": alice}, "snap-1"))
    return OnlineService(
        store=store, event_log=event_log or InMemoryEventLog(), inventory=InMemoryInventory(),
        online=OnlineConfig(**online), champion=champion or served(),
    )


def client_for(service: OnlineService) -> TestClient:
    return TestClient(build_fastapi_app(service, default_k=DEFAULT_K, max_k=MAX_K), raise_server_exceptions=False)


@pytest.fixture
def log() -> InMemoryEventLog:
    return InMemoryEventLog()


@pytest.fixture
def service(log: InMemoryEventLog) -> OnlineService:
    return make_service(event_log=log)


@pytest.fixture
def client(service: OnlineService) -> TestClient:
    return client_for(service)


def event(**fields) -> dict:
    body = {"user_id": "alice", "item_id": "i5", "event_type": "view"}
    body.update(fields)
    return body


def ids(body: dict) -> list[str]:
    return [i["item_id"] for i in body["items"]]


# --- happy paths -------------------------------------------------------------------------


def test_recommendations_for_a_known_user(client: TestClient):
    resp = client.get("/recommendations/alice")
    assert resp.status_code == 200
    body = resp.json()
    assert body["user_id"] == "alice" and body["k"] == DEFAULT_K
    assert body["fallback"] is False and body["fallback_reason"] is None
    assert body["model_version"] == "3" and body["arm"] == "champion"
    assert len(body["items"]) == DEFAULT_K
    assert set(body["items"][0]) == {"item_id", "score", "category", "reason"}
    allowed = {f"because you viewed i{n}" for n in (1, 2, 3)} | {RECENT_REASON}
    assert all(i["reason"] in allowed for i in body["items"])


def test_purchased_items_are_excluded_and_seen_ones_only_under_the_seen_policy(log):
    purchased_only = client_for(make_service(event_log=log)).get("/recommendations/alice", params={"k": MAX_K})
    assert sorted(ids(purchased_only.json())) == [f"i{n}" for n in range(1, N_ITEMS + 1) if n != 2]
    seen = client_for(make_service(event_log=log, exclude="seen")).get("/recommendations/alice", params={"k": MAX_K})
    assert sorted(ids(seen.json())) == [f"i{n}" for n in range(4, N_ITEMS + 1)]


def test_recommendations_for_an_unknown_user_fall_back(client: TestClient):
    body = client.get("/recommendations/zed", params={"k": MAX_K}).json()
    assert body["fallback"] is True and body["fallback_reason"] == "unknown_user"
    assert ids(body) == [f"i{i}" for i in range(1, MAX_K + 1)]  # popularity order
    assert {i["reason"] for i in body["items"]} == {"popular now"}


def test_posted_event_is_logged_and_changes_the_next_recommendations(client: TestClient, log: InMemoryEventLog):
    before = client.get("/recommendations/alice", params={"k": MAX_K}).json()
    top = before["items"][0]["item_id"]
    resp = client.post("/events", json=event(item_id=top, event_type="purchase", price=9.5, event_id="e-1"))
    assert resp.status_code == 202
    assert resp.json() == {"event_id": "e-1", "accepted": True, "known_item": True, "replay": False}
    assert [e["event_id"] for e in log.events] == ["e-1"]
    # The client's price is never adopted: attributes come from the catalogue (none is wired here).
    assert log.events[0]["item_id"] == top and log.events[0]["price"] is None
    after = client.get("/recommendations/alice", params={"k": MAX_K}).json()
    assert top not in ids(after)  # purchased now
    assert after["items"] != before["items"]


def test_event_for_an_unknown_item_is_accepted_logged_and_kept_in_the_session(client, service, log):
    resp = client.post("/events", json=event(item_id="new-item"))
    assert resp.status_code == 202 and resp.json()["known_item"] is False
    assert resp.json()["event_id"]  # generated
    assert log.events[0]["item_id"] == "new-item"
    assert asyncio.run(service.store.get("alice")).items[-1] == "new-item"  # a later model may know it


def test_out_of_stock_items_are_never_recommended_until_restocked(client: TestClient):
    popular = ids(client.get("/recommendations/zed", params={"k": 2}).json())
    resp = client.put("/admin/stock", json={"items": {popular[0]: False, "i9-not-in-catalogue": False}})
    assert resp.status_code == 200 and resp.json() == {"out_of_stock": sorted([popular[0], "i9-not-in-catalogue"])}
    for user in ("zed", "alice"):
        assert popular[0] not in ids(client.get(f"/recommendations/{user}", params={"k": MAX_K}).json())
    client.put("/admin/stock", json={"items": {popular[0]: True}})
    assert ids(client.get("/recommendations/zed", params={"k": 2}).json()) == popular
    bad = client.put("/admin/stock", json={"items": {}})
    assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["field"] == "body.items"


def test_healthz_and_model(client: TestClient, service: OnlineService):
    assert client.get("/healthz").json() == {
        "status": "ok", "model_loaded": True, "model_version": "3", "challenger_version": None
    }
    assert client.get("/model").json() == service.model_info().model_dump()


def test_healthz_is_degraded_without_model_weights():
    client = client_for(make_service(champion=served(with_weights=False)))
    assert client.get("/healthz").json()["status"] == "degraded"
    assert client.get("/recommendations/alice").json()["fallback_reason"] == "no_model"


# --- fallback on a failing or slow model ---------------------------------------------------


class BrokenModel:
    def __init__(self) -> None:
        self.calls = 0

    def score_next(self, seqs):
        self.calls += 1
        raise RuntimeError("CUDA exploded")


class SlowModel:
    def __init__(self, model, delay_s: float) -> None:
        self.model, self.delay_s = model, delay_s

    def score_next(self, seqs):
        time.sleep(self.delay_s)
        return self.model.score_next(seqs)


def test_a_failing_model_is_answered_by_popularity_flagged_counted_and_degraded():
    broken = BrokenModel()
    service = make_service(champion=served(model=broken))
    client = client_for(service)
    body = client.get("/recommendations/alice", params={"k": MAX_K}).json()
    assert broken.calls == 1
    assert body["fallback"] is True and body["fallback_reason"] == "model_error"
    assert "i2" not in ids(body) and {i["reason"] for i in body["items"]} == {"popular now"}  # rules still hold
    assert service.counters.fallbacks[("champion", "model_error")] == 1
    assert client.get("/healthz").json()["status"] == "degraded"
    assert client.get("/admin/counters").json()["fallbacks"] == {"champion/model_error": 1}
    service.set_model("champion", served(version="4"))  # a working model swapped in
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/recommendations/alice").json()["fallback"] is False


def test_a_model_slower_than_the_budget_is_answered_by_popularity():
    bundle = tiny_bundle()
    service = make_service(champion=served(model=SlowModel(build_model(bundle), 1.5)), latency_budget_ms=50)
    # One portal (event loop) for the whole block: closing a loop waits for its worker threads.
    with client_for(service) as client:
        started = time.perf_counter()
        body = client.get("/recommendations/alice").json()
        # Answered at the 50 ms budget, not after the model's 1.5 s (the margin is for a loaded 2-core box: the
        # unit tests run beside the Ray suite in `make test`).
        assert time.perf_counter() - started < 1.0
    assert body["fallback"] is True and body["fallback_reason"] == "latency_budget"
    assert service.counters.fallbacks[("champion", "latency_budget")] == 1
    fast = make_service(champion=served(model=SlowModel(build_model(bundle), 0.0)), latency_budget_ms=1000)
    assert client_for(fast).get("/recommendations/alice").json()["fallback"] is False


# --- canary, swaps, cache ----------------------------------------------------------------


def test_canary_users_get_the_challenger_stickily_and_arms_are_counted():
    from aisys.serving.canary import arm_for_user

    service = make_service(canary_share=0.5)
    client = client_for(service)
    users = [f"u{n}" for n in range(40)]
    only_champion = {u: client.get(f"/recommendations/{u}").json()["arm"] for u in users}
    assert set(only_champion.values()) == {"champion"}  # no challenger alias yet

    service.set_model("challenger", served(version="7", seed=1))
    assert client.get("/healthz").json()["challenger_version"] == "7"
    for _ in range(2):  # sticky: the same answer twice
        for u in users:
            body = client.get(f"/recommendations/{u}").json()
            assert body["arm"] == arm_for_user(u, 0.5)
            assert body["model_version"] == ("7" if body["arm"] == "challenger" else "3")
    n_challenger = sum(arm_for_user(u, 0.5) == "challenger" for u in users)
    assert 0 < n_challenger < len(users)
    assert service.counters.requests == {"champion": 40 + 2 * (40 - n_challenger), "challenger": 2 * n_challenger}


def test_a_swap_changes_the_version_and_the_scores(client: TestClient, service: OnlineService):
    before = client.get("/recommendations/alice", params={"k": MAX_K}).json()
    service.set_model("champion", served(version="4", seed=1))
    after = client.get("/recommendations/alice", params={"k": MAX_K}).json()
    assert (before["model_version"], after["model_version"]) == ("3", "4")
    assert [i["score"] for i in after["items"]] != [i["score"] for i in before["items"]]
    assert service.counters.swaps == 1


class CountingModel:
    def __init__(self, model) -> None:
        self.model, self.calls = model, 0
        self.item_emb = model.item_emb

    def score_next(self, seqs):
        self.calls += 1
        return self.model.score_next(seqs)


def test_the_response_cache_answers_repeats_and_a_new_event_invalidates():
    from aisys.gateway.cache import ResponseCache

    counting = CountingModel(build_model(tiny_bundle()))
    service = make_service(champion=served(model=counting))
    service.cache = ResponseCache(ttl_s=60, max_entries=100)
    client = client_for(service)
    first = client.get("/recommendations/alice").json()
    assert client.get("/recommendations/alice").json() == first
    assert counting.calls == 1 and service.counters.cache_hits["champion"] == 1
    client.get("/recommendations/alice", params={"k": 2})  # another k is another key
    assert counting.calls == 2
    client.post("/events", json=event(item_id=first["items"][0]["item_id"], event_type="purchase"))
    after = client.get("/recommendations/alice").json()
    assert counting.calls == 3 and first["items"][0]["item_id"] not in ids(after)


# --- errors ------------------------------------------------------------------------------

BAD_REQUESTS = [
    ("bad event_type", "post", "/events", event(event_type="like"), "body.event_type"),
    ("negative price", "post", "/events", event(price=-1), "body.price"),
    ("extra key", "post", "/events", event(colour="red"), "body.colour"),
    ("missing user_id", "post", "/events", {"item_id": "i1", "event_type": "view"}, "body.user_id"),
    ("empty item_id", "post", "/events", event(item_id=""), "body.item_id"),
    ("long item_id", "post", "/events", event(item_id="x" * 129), "body.item_id"),
    ("k=0", "get", "/recommendations/alice?k=0", None, "query.k"),
    ("k too big", "get", f"/recommendations/alice?k={MAX_K + 1}", None, "query.k"),
    ("k not int", "get", "/recommendations/alice?k=many", None, "query.k"),
]


@pytest.mark.parametrize("case,method,url,body,field", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_validation_errors_name_the_field(client: TestClient, log, case, method, url, body, field):
    resp = client.request(method.upper(), url, json=body)
    assert resp.status_code == 422
    err = resp.json()["error"]
    assert err["code"] == "validation_error"
    assert field in [f["field"] for f in err["fields"]]
    assert field in err["message"]
    assert log.events == []  # nothing invalid reaches the event log


def test_non_finite_value_is_rejected(client: TestClient):
    resp = client.post("/events", content='{"user_id":"a","item_id":"i1","event_type":"view","value":NaN}',
                       headers={"content-type": "application/json"})
    assert resp.status_code == 422
    assert [f["field"] for f in resp.json()["error"]["fields"]] == ["body.value"]


def test_unknown_route_and_wrong_method_are_json(client: TestClient):
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found" and "/nope" in missing.json()["error"]["message"]
    wrong = client.delete("/healthz")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


class BrokenLog(EventLog):
    def append(self, event) -> None:
        raise OSError("disk full at /secret/path")


def test_unexpected_errors_are_a_500_without_internals():
    resp = client_for(make_service(event_log=BrokenLog())).post("/events", json=event())
    assert resp.status_code == 500
    assert resp.json()["error"]["code"] == "internal_error"
    assert "secret" not in resp.text and "Traceback" not in resp.text


def _shape(body: dict) -> tuple:
    return (tuple(sorted(body)), tuple(sorted(body["error"])), type(body["error"]["fields"]), type(body["request_id"]))


def test_every_error_has_the_same_shape():
    client = client_for(make_service(event_log=BrokenLog()))
    bodies = [
        client.get("/recommendations/alice?k=0").json(),
        client.post("/events", json=event(event_type="like")).json(),
        client.get("/nope").json(),
        client.delete("/healthz").json(),
        client.post("/events", json=event()).json(),  # 500 from the broken log
    ]
    assert len({_shape(b) for b in bodies}) == 1
    assert _shape(bodies[0]) == (("error", "request_id"), ("code", "fields", "message"), list, str)


def test_request_id_comes_from_the_header_or_is_generated_and_returned(client: TestClient):
    resp = client.get("/nope", headers={"X-Request-ID": "req-42"})
    assert resp.json()["request_id"] == "req-42"
    assert resp.headers.get_list("x-request-id") == []  # the sender has it; Serve's proxy echoes its own
    first, second = client.get("/nope"), client.get("/nope")
    assert first.json()["request_id"] == first.headers["x-request-id"]
    assert second.json()["request_id"] == second.headers["x-request-id"] != first.json()["request_id"]


# --- request model and event log --------------------------------------------------------


def test_event_timestamps_accept_iso_and_epoch_and_become_utc():
    iso = EventIn(**event(timestamp="2026-01-02T03:04:05+02:00"))
    assert iso.timestamp == datetime(2026, 1, 2, 1, 4, 5, tzinfo=timezone.utc)
    epoch = EventIn(**event(timestamp=1767225600))
    assert epoch.timestamp == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert epoch.to_raw_event()["timestamp"] == "2026-01-01T00:00:00Z"
    assert EventIn(**event()).timestamp.tzinfo is not None  # defaults to now, in UTC


def test_jsonl_event_log_appends_to_daily_files(tmp_path: Path):
    day = datetime(2026, 3, 4, 23, 59, tzinfo=timezone.utc)
    log = JsonlEventLog(tmp_path / "collector", clock=lambda: day)
    first = EventIn(**event(event_id="a")).to_raw_event()
    log.append(first)
    log.append(EventIn(**event(event_id="b", price=2.0)).to_raw_event())
    path = tmp_path / "collector" / "events-20260304.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["event_id"] for r in rows] == ["a", "b"]
    assert rows[0] == first
    assert set(rows[0]) == {"event_id", "user_id", "item_id", "event_type", "value", "timestamp", "category", "price"}


# --- the gateway plugged into the routes -------------------------------------------------


def test_routes_behind_the_gateway_need_a_key_with_the_right_scope(small_config):
    from aisys.gateway import Gateway, InMemoryKeyStore, InMemoryRateLimiter, ResponseCache, create_key

    keys = InMemoryKeyStore()
    shop = create_key(keys, "shop", ["storefront"])
    reader = create_key(keys, "reader", ["recommend"])
    admin = create_key(keys, "ops", ["admin"])
    gateway = Gateway(small_config, keys, InMemoryRateLimiter(), ResponseCache(ttl_s=60, max_entries=10))
    service = make_service()
    client = TestClient(build_fastapi_app(service, default_k=DEFAULT_K, max_k=MAX_K, gateway=gateway))
    assert service.cache is gateway.cache  # the gateway's cache serves the routes

    assert client.get("/healthz").status_code == 200  # open
    missing = client.get("/recommendations/alice")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert client.get("/recommendations/alice", headers={"X-API-Key": "ak_wrong"}).status_code == 401

    as_reader = {"Authorization": f"Bearer {reader}"}
    assert client.get("/recommendations/alice", headers=as_reader).status_code == 200
    assert client.get("/model", headers=as_reader).status_code == 200
    denied = client.post("/events", json=event(), headers=as_reader)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"

    as_shop = {"X-API-Key": shop}
    assert client.post("/events", json=event(), headers=as_shop).status_code == 202
    assert client.put("/admin/stock", json={"items": {"i1": False}}, headers=as_shop).status_code == 403
    assert client.get("/admin/counters", headers=as_shop).status_code == 403
    stock = client.put("/admin/stock", json={"items": {"i1": False}}, headers={"X-API-Key": admin})
    assert stock.status_code == 200 and stock.json() == {"out_of_stock": ["i1"]}
    assert "x-ratelimit-remaining" in stock.headers and "x-ratelimit-limit" in stock.headers


def test_a_cached_list_with_an_item_now_out_of_stock_is_recomputed():
    from aisys.gateway.cache import ResponseCache

    service = make_service()
    service.cache = ResponseCache(ttl_s=60, max_entries=100)
    client = client_for(service)
    first = ids(client.get("/recommendations/alice").json())
    # Another replica took the stock update: this replica's cache was not cleared, only the shared stock changed.
    service.inventory.set_stock({first[0]: False})
    again = ids(client.get("/recommendations/alice").json())
    assert first[0] not in again and again[: len(first) - 1] == first[1:]
    assert service.counters.cache_hits["champion"] == 0
