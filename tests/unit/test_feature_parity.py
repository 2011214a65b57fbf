"""Training and serving build the same model input from the same events.

Training path: ``user_histories`` over an events table -> ``recent_window``.
Serving paths: (a) the same events posted one by one over HTTP into the session
store, (b) the snapshot seeding (``sessions_from_events``); both go through
``Recommender.model_input``. The windows must be identical, element for element.
"""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
from fastapi.testclient import TestClient

from aisys.config import OnlineConfig
from aisys.features.sequences import build_vocabulary, recent_window, user_histories
from aisys.models.bundle import ModelBundle
from aisys.models.sasrec import SASRec, SASRecConfig
from aisys.schemas import EVENT_SCHEMA
from aisys.serving.api_models import ModelOut
from aisys.serving.event_log import InMemoryEventLog
from aisys.serving.recommender import Recommender
from aisys.serving.routes import build_fastapi_app
from aisys.serving.rules import InMemoryInventory
from aisys.serving.service import OnlineService, ServedModel
from aisys.serving.session_store import InMemorySessionStore, sessions_from_events

MAX_LEN = 6
EVENT_TYPES = ["view", "view", "add_to_cart", "purchase", "rating"]


def random_events(seed: int = 3, n_users: int = 6, n_events: int = 90) -> pa.Table:
    """Events in shuffled row order, with timestamp ties, repeats and every event type."""
    rng = random.Random(seed)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = []
    for n in range(n_events):
        item = f"item{rng.randrange(15):02d}"
        rows.append({
            "event_id": f"e{n}", "user_id": f"u{rng.randrange(n_users)}", "item_id": item,
            "event_type": rng.choice(EVENT_TYPES), "value": 1.0,
            "timestamp": t0 + timedelta(minutes=rng.randrange(40)),  # many ties on purpose
            "category": f"c{int(item[-2:]) % 3}", "price": 1.0,
        })
    rng.shuffle(rows)
    return pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)


def bundle_for(train_events: pa.Table) -> ModelBundle:
    vocab = build_vocabulary(train_events, {"view": 1.0, "purchase": 3.0})
    config = SASRecConfig(n_items=vocab.n_items, max_seq_len=MAX_LEN, embedding_dim=8, n_layers=1, n_heads=2)
    return ModelBundle(
        model_kind="sasrec", model_config=config.to_dict(), item_ids=vocab.item_ids,
        item_popularity=vocab.item_popularity, state_dict=SASRec(config).state_dict(),
        item_categories=vocab.item_categories, max_seq_len=MAX_LEN,
    )


def training_windows(events: pa.Table, bundle: ModelBundle) -> dict[str, np.ndarray]:
    return {u: recent_window(h, MAX_LEN) for u, h in user_histories(events, bundle.item_index()).items()}


def time_ordered_rows(events: pa.Table) -> list[dict]:
    """The order a live collector receives events in: by time, ties in table row order (as training sorts)."""
    rows = events.to_pylist()
    return [row for _, row in sorted(enumerate(rows), key=lambda pair: (pair[1]["timestamp"], pair[0]))]


def test_events_posted_one_by_one_give_the_training_windows():
    events = random_events()
    # The model was trained on part of the catalogue: later items are unknown to it and skipped on both paths.
    bundle = bundle_for(events.filter(pa.compute.less(events["item_id"], "item12")))
    recommender = Recommender(bundle)
    store = InMemorySessionStore(max_items=200)
    service = OnlineService(store=store, event_log=InMemoryEventLog(), inventory=InMemoryInventory(),
                            online=OnlineConfig(), champion=ServedModel(recommender, ModelOut(version="1")))
    client = TestClient(build_fastapi_app(service))
    for row in time_ordered_rows(events):
        body = {k: row[k] for k in ("event_id", "user_id", "item_id", "event_type", "value", "category", "price")}
        body["timestamp"] = row["timestamp"].isoformat()
        assert client.post("/events", json=body).status_code == 202

    expected = training_windows(events, bundle)
    users = sorted(set(events["user_id"].to_pylist()))
    sessions = dict(zip(users, asyncio.run(store.get_many(users))))
    assert set(expected) <= set(users)
    for user in users:
        served = recommender.model_input(sessions[user])
        want = expected.get(user, np.zeros(MAX_LEN, dtype=np.int64))
        assert served.dtype == want.dtype and served.tolist() == want.tolist(), user
    # The windows are not trivial: unknown items were skipped, and histories are longer than the window.
    assert any((w > 0).all() for w in expected.values())
    assert any(item >= "item12" for s in sessions.values() for item in s.items)


def test_snapshot_seeding_gives_the_training_windows():
    events = random_events(seed=5)
    bundle = bundle_for(events)
    recommender = Recommender(bundle)
    sessions = sessions_from_events(events, bundle.item_index())
    expected = training_windows(events, bundle)
    assert set(sessions) == set(expected)
    for user, window in expected.items():
        assert recommender.model_input(sessions[user]).tolist() == window.tolist(), user
    # The newest event and the purchases come along for the cache key and the rules.
    rows = time_ordered_rows(events)
    for user, session in sessions.items():
        mine = [r for r in rows if r["user_id"] == user]
        assert session.last_event_id == mine[-1]["event_id"]
        assert session.purchased == {r["item_id"] for r in mine if r["event_type"] == "purchase"}
