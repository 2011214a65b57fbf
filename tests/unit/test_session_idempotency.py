"""A replayed event (same ``event_id``) leaves the session as it is: a load balancer may retry ``POST /events``."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from aisys.data.validate import ValidationRules, dedupe_events, validate_events
from aisys.serving.event_log import InMemoryEventLog
from aisys.serving.session_store import InMemorySessionStore, SessionTable, UserSession
from tests.unit.test_api import client_for, make_service

RULES = ValidationRules(datetime(1990, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc))


def test_a_replayed_event_is_applied_once():
    table = SessionTable()
    first = table.record("u", "e1", "i1", "purchase")
    again = table.record("u", "e1", "i1", "purchase")
    assert again == first == UserSession(items=("i1",), last_event_id="e1", purchased=frozenset({"i1"}))
    assert table.replays == 1


def test_a_replay_arriving_after_newer_events_changes_nothing():
    table = SessionTable()
    for n in range(5):
        table.record("u", f"e{n}", f"i{n}", "view")
    before = table.get_many(["u"])[0]
    assert table.record("u", "e2", "i2", "view") == before  # e2 is not the last id, but a recent one
    assert table.get_many(["u"])[0].items == ("i0", "i1", "i2", "i3", "i4")
    assert table.replays == 1


def test_replays_are_per_user_and_ids_beyond_the_window_apply_again():
    table = SessionTable(recent_event_ids=2)
    table.record("u", "e1", "a", "view")
    table.record("v", "e1", "a", "view")  # the same id for another user is that user's event
    assert table.get_many(["v"])[0].items == ("a",)
    table.record("u", "e2", "b", "view")
    table.record("u", "e3", "c", "view")
    # Only the last 2 ids are remembered: the bound on memory is a bound on how late a replay may come.
    assert table.record("u", "e1", "a", "view").items == ("a", "b", "c", "a")
    assert table.replays == 0
    with pytest.raises(ValueError, match="recent_event_ids"):
        SessionTable(recent_event_ids=0)


def test_the_event_a_snapshot_seeded_is_not_applied_again():
    table = SessionTable()
    table.bulk_load({"u": UserSession(items=("a", "b"), last_event_id="s9", purchased=frozenset())}, "snap")
    assert table.record("u", "s9", "b", "view").items == ("a", "b")
    assert table.record("u", "new", "c", "view").items == ("a", "b", "c")


def test_apply_says_whether_the_event_was_applied():
    table = SessionTable()
    assert table.apply("u", "e1", "i1", "view") == (UserSession(items=("i1",), last_event_id="e1"), True)
    assert table.apply("u", "e1", "i1", "view") == (UserSession(items=("i1",), last_event_id="e1"), False)
    assert table.apply("u", "e2", "i2", "view")[1] is True


def test_the_async_store_dedups_too():
    async def scenario():
        store = InMemorySessionStore()
        await store.record("u", "e1", "i1", "view")
        await store.record("u", "e1", "i1", "view")
        return await store.get("u")

    assert asyncio.run(scenario()).items == ("i1",)


def test_a_replayed_post_over_http_appends_once_and_ingest_keeps_one_row():
    log = InMemoryEventLog()
    service = make_service(event_log=log)
    client = client_for(service)
    body = {"event_id": "retry-1", "user_id": "alice", "item_id": "i5", "event_type": "purchase"}
    answers = [client.post("/events", json=body) for _ in range(2)]
    assert [a.status_code for a in answers] == [202, 202]
    assert {a.json()["event_id"] for a in answers} == {"retry-1"}
    assert [a.json()["replay"] for a in answers] == [False, True]
    # Counted once: the counters (and so the metrics and the drift monitor) see one event, and one replay.
    assert (service.counters.events, service.counters.event_replays) == (1, 1)
    session = asyncio.run(service.store.get("alice"))
    assert session.items == ("i1", "i2", "i3", "i5") and session.last_event_id == "retry-1"
    # The collector logged both attempts; ingestion keeps one row per event_id.
    assert [e["event_id"] for e in log.events] == ["retry-1", "retry-1"]
    clean, quarantine = validate_events(pa.Table.from_pylist(log.events), RULES)
    unique, in_batch, _ = dedupe_events(clean)
    assert quarantine.num_rows == 0 and unique.num_rows == 1 and in_batch == 1


def test_session_keeps_the_newest_event_time_even_when_events_arrive_out_of_order():
    table = SessionTable()
    assert table.record("u1", "e1", "i1", "view", 1_000.0).last_event_time == 1_000.0
    assert table.record("u1", "e2", "i2", "view", 900.0).last_event_time == 1_000.0  # late arrival
    assert table.record("u1", "e3", "i3", "view", 1_500.5).last_event_time == 1_500.5
    assert table.record("u1", "e4", "i4", "view").last_event_time == 1_500.5  # no time: keeps the last known


def test_sessions_seeded_from_a_snapshot_carry_the_users_newest_event_time():
    from datetime import datetime, timezone

    import pyarrow as pa

    from aisys.schemas import TIMESTAMP_TYPE
    from aisys.serving.session_store import sessions_from_events

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    t1 = datetime(2026, 1, 2, tzinfo=timezone.utc)
    events = pa.table({
        "user_id": ["u1", "u1"], "item_id": ["a", "b"], "event_type": ["view", "view"],
        "event_id": ["e1", "e2"], "timestamp": pa.array([t1, t0], type=TIMESTAMP_TYPE),
    })
    sessions = sessions_from_events(events, {"a": 1, "b": 2})
    assert sessions["u1"].last_event_time == t1.timestamp()
    assert SessionTable().bulk_load(sessions, "s1") == 1
