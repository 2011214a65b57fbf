"""The request gap is one feature offline and online: replayed events give the same gaps on both sides."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.compute as pc

from aisys.config import SimulatorConfig
from aisys.data.simulator import simulate_events
from aisys.features.context import gaps_since_last_event, seconds_since_last_event, user_history_times
from aisys.features.sequences import build_vocabulary, user_histories
from aisys.serving.session_store import SessionTable, sessions_from_events


def test_seconds_since_last_event_is_nan_when_unknown_and_never_negative():
    assert seconds_since_last_event(100.0, 160.5) == 60.5
    assert math.isnan(seconds_since_last_event(None, 10.0)) and math.isnan(seconds_since_last_event(10.0, None))
    assert seconds_since_last_event(200.0, 100.0) == 0.0  # a clock behind the newest event: same session
    assert np.array_equal(gaps_since_last_event([1.0, None], [4.0, 5.0]), [3.0, np.nan], equal_nan=True)


def test_replayed_events_give_the_online_gaps_that_training_computes_offline():
    events = simulate_events(SimulatorConfig(n_users=40, n_items=30, n_sessions=300, days=10, seed=5))
    events = events.slice(0, 1500)  # a slice of the stream
    vocab = build_vocabulary(events, {"view": 1.0, "add_to_cart": 2.0, "purchase": 3.0})
    histories = user_histories(events, vocab.item_index())
    times = user_history_times(events, vocab.item_index())
    assert {u: len(h) for u, h in histories.items()} == {u: len(t) for u, t in times.items()}

    # Online: post the events in time order; before each, the user's request at that event's time.
    order = np.argsort(pc.cast(events.column("timestamp"), "int64").to_numpy(), kind="stable")
    rows = events.take(order).to_pylist()
    table = SessionTable()
    online: dict[str, list[float]] = {}
    for row in rows:
        now = row["timestamp"].timestamp()
        session = table.get_many([row["user_id"]])[0]
        online.setdefault(row["user_id"], []).append(seconds_since_last_event(session.last_event_time, now))
        table.record(row["user_id"], row["event_id"], row["item_id"], row["event_type"], now)

    # Offline: a request at the time of history item j comes after history item j - 1 (the first has none).
    offline = {u: [math.nan] + [seconds_since_last_event(t[j - 1], t[j]) for j in range(1, len(t))]
               for u, t in times.items()}
    assert offline.keys() == online.keys()
    for user in offline:
        assert np.allclose(online[user], offline[user], equal_nan=True), user

    # Sessions seeded from the snapshot hold the newest event time, as the replay's final sessions do.
    seeded = sessions_from_events(events, vocab.item_index())
    for user, t in times.items():
        assert seeded[user].last_event_time == t[-1] == table.get_many([user])[0].last_event_time
