"""The HTTP API through FastAPI's TestClient, around a real Recommender (no Ray)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from aisys.models.bundle import ModelBundle
from aisys.models.sasrec import SASRec, SASRecConfig
from aisys.serving.api_models import EventIn, ModelOut
from aisys.serving.event_log import EventLog, InMemoryEventLog, JsonlEventLog
from aisys.serving.recommender import Recommender
from aisys.serving.routes import ServingState, build_fastapi_app

N_ITEMS = 8
DEFAULT_K = 3
MAX_K = 5


def tiny_bundle(with_weights: bool = True) -> ModelBundle:
    torch.manual_seed(0)
    config = SASRecConfig(n_items=N_ITEMS, max_seq_len=4, embedding_dim=16, n_layers=1, n_heads=2, dropout=0.0)
    return ModelBundle(
        model_kind="sasrec",
        model_config=config.to_dict(),
        item_ids=[""] + [f"i{i}" for i in range(1, N_ITEMS + 1)],
        item_popularity=[0.0] + [float(N_ITEMS - i + 1) for i in range(1, N_ITEMS + 1)],
        state_dict=SASRec(config).state_dict() if with_weights else None,
        item_categories=[None] + [f"c{i % 3}" for i in range(1, N_ITEMS + 1)],
        max_seq_len=4,
        lineage={"snapshot_id": "snap-1", "run_id": "run-1"},
        metrics={"hit_rate@10": 0.5},
    )


MODEL_OUT = ModelOut(
    name="aisys-recommender", version="3", alias="champion", run_id="run-1", snapshot_id="snap-1",
    metrics={"hit_rate@10": 0.5}, lineage={"snapshot_id": "snap-1", "run_id": "run-1"},
)


def make_client(bundle: ModelBundle | None = None, event_log: EventLog | None = None) -> TestClient:
    recommender = Recommender(bundle or tiny_bundle(), {"alice": [1, 2, 3]})
    state = ServingState(recommender=recommender, event_log=event_log or InMemoryEventLog(), model=MODEL_OUT)
    return TestClient(build_fastapi_app(state, default_k=DEFAULT_K, max_k=MAX_K), raise_server_exceptions=False)


@pytest.fixture
def log() -> InMemoryEventLog:
    return InMemoryEventLog()


@pytest.fixture
def client(log: InMemoryEventLog) -> TestClient:
    return make_client(event_log=log)


def event(**fields) -> dict:
    body = {"user_id": "alice", "item_id": "i5", "event_type": "view"}
    body.update(fields)
    return body


# --- happy paths -------------------------------------------------------------------------


def test_recommendations_for_a_known_user(client: TestClient):
    resp = client.get("/recommendations/alice")
    assert resp.status_code == 200
    body = resp.json()
    assert body["user_id"] == "alice" and body["k"] == DEFAULT_K
    assert body["fallback"] is False and body["reason"] is None
    assert body["model_version"] == "3"
    assert len(body["items"]) == DEFAULT_K
    assert {"i1", "i2", "i3"}.isdisjoint(i["item_id"] for i in body["items"])
    assert set(body["items"][0]) == {"item_id", "score", "category"}


def test_recommendations_for_an_unknown_user_fall_back(client: TestClient):
    body = client.get("/recommendations/zed", params={"k": MAX_K}).json()
    assert body["fallback"] is True and body["reason"] == "unknown_user"
    assert [i["item_id"] for i in body["items"]] == [f"i{i}" for i in range(1, MAX_K + 1)]  # popularity order


def test_posted_event_is_logged_and_changes_the_next_recommendations(client: TestClient, log: InMemoryEventLog):
    before = client.get("/recommendations/alice", params={"k": MAX_K}).json()
    top = before["items"][0]["item_id"]
    resp = client.post("/events", json=event(item_id=top, event_type="purchase", price=9.5, event_id="e-1"))
    assert resp.status_code == 202
    assert resp.json() == {"event_id": "e-1", "accepted": True, "known_item": True}
    assert [e["event_id"] for e in log.events] == ["e-1"]
    assert log.events[0]["item_id"] == top and log.events[0]["price"] == 9.5
    after = client.get("/recommendations/alice", params={"k": MAX_K}).json()
    assert top not in [i["item_id"] for i in after["items"]]
    assert after["items"] != before["items"]


def test_event_for_an_unknown_item_is_accepted_and_logged(client: TestClient, log: InMemoryEventLog):
    resp = client.post("/events", json=event(item_id="new-item"))
    assert resp.status_code == 202 and resp.json()["known_item"] is False
    assert resp.json()["event_id"]  # generated
    assert log.events[0]["item_id"] == "new-item"


def test_healthz_and_model(client: TestClient):
    assert client.get("/healthz").json() == {"status": "ok", "model_loaded": True, "model_version": "3"}
    assert client.get("/model").json() == MODEL_OUT.model_dump()


def test_healthz_is_degraded_without_model_weights():
    client = make_client(bundle=tiny_bundle(with_weights=False))
    assert client.get("/healthz").json()["status"] == "degraded"
    assert client.get("/recommendations/alice").json()["reason"] == "no_model"


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
    resp = make_client(event_log=BrokenLog()).post("/events", json=event())
    assert resp.status_code == 500
    assert resp.json()["error"]["code"] == "internal_error"
    assert "secret" not in resp.text and "Traceback" not in resp.text


def _shape(body: dict) -> tuple:
    return (tuple(sorted(body)), tuple(sorted(body["error"])), type(body["error"]["fields"]), type(body["request_id"]))


def test_every_error_has_the_same_shape():
    client = make_client(event_log=BrokenLog())
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
