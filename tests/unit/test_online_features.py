"""Online item features equal the offline ones: a replayed slice of the event stream, both ways.

Offline (training the ranker): :class:`PointInTimeActivity` answers each request from the events strictly before
it. Online (a replica): an :class:`ItemActivity` seeded from the bundle's snapshot, then told of every posted event
(``OnlineService.record_event`` -> ``Recommender.observe_event``), answers at the request's clock.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

from aisys.config import SimulatorConfig
from aisys.data.simulator import simulate_events
from aisys.features.activity import (
    ACTIVITY_FEATURE_NAMES,
    ItemActivity,
    PointInTimeActivity,
    activity_from_events,
    category_matrix,
)
from aisys.features.sequences import build_vocabulary

DAY = 86_400.0


def stream():
    """A slice of the simulated stream as (item indices, seconds), in time order."""
    events = simulate_events(SimulatorConfig(n_users=40, n_items=30, n_sessions=300, days=10, seed=5)).slice(0, 1500)
    vocab = build_vocabulary(events, {"view": 1.0, "add_to_cart": 2.0, "purchase": 3.0})
    index = vocab.item_index()
    items = np.array([index[i] for i in events.column("item_id").to_pylist()], dtype=np.int64)
    times = pc.cast(events.column("timestamp"), "int64").to_numpy().astype(np.float64) / 1e6  # us -> s
    order = np.argsort(times, kind="stable")
    return vocab.n_items, items[order], times[order]


def test_replayed_events_give_online_the_features_training_computes_offline():
    n_items, items, times = stream()
    cut = len(items) // 2
    # The bundle's snapshot: the first half, through the arrays a bundle stores.
    online = ItemActivity.from_arrays(activity_from_events(n_items, items[:cut], times[:cut]).to_arrays())
    offline = PointInTimeActivity(n_items, items, times)
    everything = np.arange(1, n_items + 1)
    checked = 0
    for n in range(cut, len(items)):
        if times[n] > times[n - 1]:  # a request just before the first event of this second (offline: strictly before)
            now = np.full(everything.size, times[n])
            got = online.item_features(everything, now)
            want = offline.item_features(everything, now)
            for name, a, b in zip(ACTIVITY_FEATURE_NAMES, got, want):
                assert np.allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True), (n, name)
            checked += 1
        online.observe(int(items[n]), float(times[n]))  # the posted event
    assert checked > 100


def test_offline_features_see_only_events_before_each_request():
    activity = PointInTimeActivity(3, [1, 1, 2, 1], [0.0, DAY, DAY, 2 * DAY])
    age, pop_1d, _, _, total = activity.item_features(np.array([1, 1, 3]), np.array([DAY, 3 * DAY, DAY]))
    assert np.expm1(total).tolist() == pytest.approx([1.0, 3.0, 0.0])  # at DAY the event at DAY is not yet seen
    assert np.expm1(age).tolist()[:2] == pytest.approx([1.0, 3.0]) and np.isnan(age[2])  # days since first seen
    # Decayed with a 1-day half-life: one event a day old is worth 1/2 (the first request).
    assert np.expm1(pop_1d[0]) == pytest.approx(0.5)
    assert np.expm1(pop_1d[1]) == pytest.approx(0.25 + 0.5 + 0.125)


def test_the_decayed_count_does_not_depend_on_the_order_events_arrive_in():
    rng = np.random.default_rng(3)
    items, times = rng.integers(1, 6, 200), rng.uniform(0, 30 * DAY, 200)
    in_order, shuffled = ItemActivity(5), ItemActivity(5)
    for n in np.argsort(times):
        in_order.observe(int(items[n]), float(times[n]))
    for n in rng.permutation(200):
        shuffled.observe(int(items[n]), float(times[n]))
    now = np.full(5, 31 * DAY)
    for a, b in zip(in_order.item_features(np.arange(1, 6), now), shuffled.item_features(np.arange(1, 6), now)):
        assert np.allclose(a, b, rtol=1e-9)


def test_bad_events_and_states_are_refused_with_the_reason():
    activity = ItemActivity(4)
    with pytest.raises(ValueError, match="1..4"):
        activity.observe(5, 0.0)
    with pytest.raises(ValueError, match="lack"):
        ItemActivity.from_arrays({"decayed": np.zeros((3, 5))})
    with pytest.raises(ValueError, match="request time"):
        PointInTimeActivity(4, [1], [0.0]).item_features(np.array([1]), np.array([np.nan]))


def test_category_matrix_is_one_hot_and_none_without_categories():
    matrix = category_matrix([None, "b", "a", None, "b"])
    assert matrix.tolist() == [[0, 0], [0, 1], [1, 0], [0, 0], [0, 1]]
    assert category_matrix([None, None]) is None
