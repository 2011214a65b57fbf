"""The Serve application end to end: registry -> lake snapshot -> Ray Serve (2 replicas, gateway) -> real HTTP."""

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.json as pajson
import pytest
import torch

from aisys.config import AppConfig
from aisys.data.lake import COUNT_KEYS, Lake, Manifest, new_snapshot_id
from aisys.data.validate import ValidationRules, validate_events
from aisys.features.sequences import build_vocabulary
from aisys.models.bundle import ModelBundle
from aisys.models.sasrec import SASRec, SASRecConfig
from aisys.registry.mlflow_registry import RegisteredModel, log_and_register
from aisys.schemas import EVENT_SCHEMA, schema_hash
from aisys.gateway import create_key, ensure_dev_keys
from aisys.gateway.keys import FileKeyStore, keys_file_path
from aisys.serving.rules import RECENT_REASON
from aisys.serving.app import start_serving, stop_serving

pytestmark = pytest.mark.ray

N_USERS, N_ITEMS, LENGTH = 12, 20, 6


def free_port() -> int:
    """A port for a Serve, HAProxy or Ray port bound later: chosen outside the OS's ephemeral range and Ray's worker
    ports (``free_tcp_port``), where a ``bind(0)`` of Ray's processes could take it in between (seen in CI)."""
    from aisys.runtime.ingress import free_tcp_port

    return free_tcp_port()


def shop_events() -> pa.Table:
    """Each user views LENGTH consecutive items of a 20-item catalogue."""
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = {name: [] for name in EVENT_SCHEMA.names}
    for u in range(N_USERS):
        for t in range(LENGTH):
            item = (u + t) % N_ITEMS
            rows["event_id"].append(f"e{u}-{t}")
            rows["user_id"].append(f"user{u}")
            rows["item_id"].append(f"item{item:02d}")
            rows["event_type"].append("view")
            rows["value"].append(1.0)
            rows["timestamp"].append(t0 + timedelta(minutes=10 * t + u))
            rows["category"].append(f"c{item % 3}")
            rows["price"].append(2.0)
    return pa.Table.from_pydict(rows, schema=EVENT_SCHEMA)


def commit_snapshot(cfg: AppConfig, events: pa.Table) -> str:
    lake = Lake(cfg.paths.lake_uri)
    snapshot_id = new_snapshot_id()
    files = lake.write_event_files(events, snapshot_id)
    counts = dict.fromkeys(COUNT_KEYS, 0) | {
        "input": events.num_rows, "clean": events.num_rows, "written": events.num_rows, "total_rows": events.num_rows
    }
    lake.commit(Manifest(
        snapshot_id=snapshot_id, parent_id=None, created_at=datetime.now(timezone.utc).isoformat(),
        source="test_serve", schema_hash=schema_hash(), counts=counts, files=[path for path, _ in files],
    ))
    return snapshot_id


def register_untrained(cfg: AppConfig, events: pa.Table, snapshot_id: str, seed: int = 0,
                       alias: str | None = "champion") -> RegisteredModel:
    """Register an untrained SASRec over the snapshot's vocabulary (serving does not care how good it is)."""
    torch.manual_seed(seed)
    vocab = build_vocabulary(events, cfg.features.event_weights)
    config = SASRecConfig.from_app(cfg, vocab.n_items)
    bundle = ModelBundle(
        model_kind="sasrec", model_config=config.to_dict(), item_ids=vocab.item_ids,
        item_popularity=vocab.item_popularity, state_dict=SASRec(config).state_dict(),
        item_categories=vocab.item_categories, max_seq_len=cfg.features.max_seq_len, metrics={"hr@10": 0.25},
    )
    return log_and_register(cfg, bundle, params={"source": "test_serve"}, metrics={"hr@10": 0.25},
                            history=[], snapshot_id=snapshot_id, alias=alias)


def eventually(check, within_s: float = 5.0) -> bool:
    """Whether ``check()`` holds within ``within_s`` (sessions reach other replicas within one sync period)."""
    import time

    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def ids(body: dict) -> list[str]:
    return [item["item_id"] for item in body["items"]]


@pytest.mark.slow
def test_serve_over_http(ray_session, small_config):
    cfg = small_config
    cfg.serve.port = free_port()
    cfg.serve.num_replicas = 2  # events posted to one replica must show on the other
    cfg.online.latency_budget_ms = 5000  # the budget fallback has its own tests; here a busy box must not trigger it
    events = shop_events()
    snapshot_id = commit_snapshot(cfg, events)
    registered = register_untrained(cfg, events, snapshot_id)
    admin_key = ensure_dev_keys(cfg)["dev-admin"]
    reader_key = create_key(FileKeyStore(keys_file_path(cfg)), "reader", ["recommend"])

    url = start_serving(cfg)
    try:
        assert url == f"http://127.0.0.1:{cfg.serve.port}"
        with httpx.Client(base_url=url, timeout=30, headers={"X-API-Key": admin_key}) as client:
            health = client.get("/healthz").json()
            assert health == {"status": "ok", "model_loaded": True, "model_version": registered.version,
                              "challenger_version": None}

            # The gateway guards every route but /healthz, over the wire.
            assert httpx.get(f"{url}/healthz").status_code == 200
            assert httpx.get(f"{url}/recommendations/user3").status_code == 401
            denied = httpx.post(f"{url}/events", headers={"X-API-Key": reader_key},
                                json={"user_id": "u", "item_id": "item01", "event_type": "view"})
            assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"

            model = client.get("/model").json()
            assert model["version"] == registered.version and model["alias"] == "champion"
            assert model["snapshot_id"] == snapshot_id and model["run_id"] == registered.run_id
            assert model["name"] == cfg.registry.model_name and model["metrics"] == {"hr@10": 0.25}

            # A known user: the session was seeded from the lake snapshot, so reasons name their items.
            seen = {f"item{(3 + t) % N_ITEMS:02d}" for t in range(LENGTH)}
            known = client.get("/recommendations/user3", params={"k": 5}).json()
            assert known["fallback"] is False and known["model_version"] == registered.version
            assert known["arm"] == "champion" and len(known["items"]) == 5
            for item in known["items"]:  # a viewed item may come back as a reminder; others name a viewed item
                if item["reason"] == RECENT_REASON:
                    assert item["item_id"] in seen
                else:
                    assert item["reason"].removeprefix("because you viewed ") in seen

            unknown = client.get("/recommendations/stranger", params={"k": 4}).json()
            assert unknown["fallback"] is True and unknown["fallback_reason"] == "unknown_user"
            assert len(unknown["items"]) == 4 and unknown["items"][0]["reason"] == "popular now"

            # Each event shows on whichever of the 2 replicas takes the next request within the documented bound
            # (online.session_sync_every_s, 0.1 s: each replica reads a local copy of the shared sessions; the
            # replica that took the event sees it at once). The poll only bounds a broken sync.
            for n in range(6):
                top = ids(client.get("/recommendations/user3", params={"k": 5}).json())[0]
                posted = client.post("/events", json={"user_id": "user3", "item_id": top, "event_type": "purchase",
                                                      "event_id": f"live-{n}", "price": 3.5})
                assert posted.status_code == 202 and posted.json()["known_item"] is True
                assert eventually(lambda: top not in ids(client.get("/recommendations/user3",
                                                                    params={"k": 5}).json()))
            client.post("/events", json={"user_id": "stranger", "item_id": "item07", "event_type": "view"})
            assert eventually(lambda: client.get("/recommendations/stranger").json()["fallback"] is False)

            # Out of stock on every replica (the stock file is shared).
            gone = ids(unknown)[0]
            assert client.put("/admin/stock", json={"items": {gone: False}}).status_code == 200
            for _ in range(6):
                assert gone not in ids(client.get("/recommendations/nobody", params={"k": 4}).json())

            # Concurrent requests go through @serve.batch; each gets its own k and the same ranking.
            # Scores are compared with a tolerance: batched kernels round differently, and an untrained
            # model has near-ties whose order may flip.
            users = [f"user{u}" for u in range(N_USERS)]
            sequential = {u: client.get(f"/recommendations/{u}", params={"k": 5}).json() for u in users}
            with ThreadPoolExecutor(max_workers=8) as pool:
                answers = list(pool.map(
                    lambda n: client.get(f"/recommendations/{users[n % N_USERS]}", params={"k": 1 + n % 5}),
                    range(24),
                ))
            for n, resp in enumerate(answers):
                assert resp.status_code == 200
                body, alone = resp.json(), sequential[users[n % N_USERS]]
                assert body["fallback"] is False and len(body["items"]) == 1 + n % 5
                assert [i["score"] for i in body["items"]] == pytest.approx(
                    [i["score"] for i in alone["items"][: 1 + n % 5]], abs=1e-4)

            # Errors are JSON over the wire, naming the field.
            bad_k = client.get("/recommendations/user3", params={"k": 0})
            assert bad_k.status_code == 422
            assert [f["field"] for f in bad_k.json()["error"]["fields"]] == ["query.k"]
            bad_type = client.post("/events", json={"user_id": "u", "item_id": "i", "event_type": "like"})
            assert bad_type.status_code == 422 and bad_type.json()["error"]["fields"][0]["field"] == "body.event_type"
            missing = client.get("/no/such/route")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
            # Serve's proxy sets the request id; the body carries it and the header is not doubled.
            assert missing.headers.get_list("x-request-id") == [missing.json()["request_id"]]
    finally:
        stop_serving(cfg)

    # The collector wrote what it accepted, in a raw format ingestion validates as clean.
    files = sorted((Path(cfg.paths.workspace) / "collector").glob("events-*.jsonl"))
    assert len(files) == 1
    lines = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert sorted(row["event_id"] for row in lines if row["event_id"].startswith("live-")) == [
        f"live-{n}" for n in range(6)
    ]
    assert len(lines) == 7
    clean, quarantine = validate_events(pajson.read_json(files[0]), ValidationRules.from_config(cfg.ingest))
    assert clean.num_rows == 7 and quarantine.num_rows == 0
