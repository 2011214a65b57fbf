"""Live recent popularity: the blend's popularity generators count the events a replica is told of after training.

Training fits the counts (``RecentPopularity``, decayed to the newest training event); a bundle with
``popularity_as_of`` seeds them into an ``ItemActivity`` and every posted event (``Recommender.observe_event``) adds
to them. Counting afterwards must give exactly the counts training would have fit on every event (the offline and
online paths agree), and the serving-path evaluation tells the recommender of each later event before the requests
that come after it, never before those that come earlier.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from aisys.features.activity import ItemActivity
from aisys.models.baselines import RecentPopularity
from aisys.models.multistage import POPULARITY_AS_OF, build_scorer
from aisys.quality.protocol import interactions_from_events, split_tasks
from aisys.serving.recommender import Recommender, ScoreRequest
from aisys.serving.session_store import UserSession
from aisys.shipped_evaluation import events_after_training, served_lists

from tests.unit.test_shipped_evaluation import CATALOGUE, events, tiny_multistage_bundle

DAY = 86_400.0


def recent_popularity(items, times, n_items, half_life_days):
    """RecentPopularity fit on one user's (items, times): counts decayed to the newest of ``times``."""
    model = RecentPopularity(half_life_days).fit({"u": list(items)}, n_items, times={"u": list(times)})
    return model.counts


def test_counting_after_training_equals_training_on_every_event():
    rng = np.random.default_rng(1)
    n_items, half_lives = 12, [1.0, 3.0]
    items = rng.integers(1, n_items + 1, 300)
    times = np.sort(rng.uniform(0, 20 * DAY, 300))
    trained = slice(0, 200)
    counts = np.stack([recent_popularity(items[trained], times[trained], n_items, h) for h in half_lives])
    live = ItemActivity.from_decayed_counts(counts, times[199], half_lives)
    shuffled = rng.permutation(np.arange(200, 300))  # a replica may be told out of order
    live.observe_many(items[shuffled], times[shuffled])
    everything = np.stack([recent_popularity(items, times, n_items, h) for h in half_lives])
    got = live.decayed_counts()
    assert got[:, 1:] == pytest.approx(everything[:, 1:], rel=1e-9)
    # As of a later time every count is scaled alike: the order, and a row's z-scores, do not change.
    later_counts = live.decayed_counts(times[-1] + 2 * DAY)
    assert later_counts[0, 1:] == pytest.approx(got[0, 1:] * 0.25, rel=1e-9)


def test_a_bundle_with_popularity_as_of_counts_the_events_it_is_told_of():
    static = tiny_multistage_bundle()
    config = {**static.model_config, POPULARITY_AS_OF: 1_000.0}
    live = dataclasses.replace(static, model_config=config)
    session = UserSession(items=("1", "2"), last_event_time=0.0)
    request = ScoreRequest(session, 6, frozenset(), now=10 * DAY)  # came back: popularity weighs in
    recommenders = {name: Recommender(bundle) for name, bundle in (("static", static), ("live", live))}
    before = {name: r.recommend_many([request])[0] for name, r in recommenders.items()}
    assert [i.item_id for i in before["live"].items] == [i.item_id for i in before["static"].items]
    least = before["live"].items[-1].item_id
    for name, recommender in recommenders.items():
        for second in range(50):
            counted = recommender.observe_event(least, 2_000.0 + second)
            assert counted == (name == "live")
    after = {name: r.recommend_many([request])[0] for name, r in recommenders.items()}
    assert [i.item_id for i in after["static"].items] == [i.item_id for i in before["static"].items]
    assert after["live"].items[0].item_id == least
    assert build_scorer(live).live_popularity and not build_scorer(static).live_popularity


def test_the_evaluation_tells_each_later_event_before_the_requests_after_it_only():
    rows = [("a", "1", 10), ("a", "2", 20), ("b", "2", 15), ("b", "3", 25), ("c", "1", 12), ("c", "4", 22),
            ("a", "5", 100), ("c", "6", 110), ("b", "4", 120), ("a", "6", 130)]
    data = interactions_from_events(events(rows), CATALOGUE)
    live = events_after_training(data, "temporal")
    assert live.item_ids == ["4", "6"] and list(live.times_s) == [120.0, 130.0]  # the cut: the 8th of 10 (110 s)
    assert len(events_after_training(data, "loo")) == 0
    _, test = split_tasks(data, "temporal")

    class Recording:
        def __init__(self):
            self.log = []

        def observe_event(self, item_id, time_s):
            self.log.append(("event", item_id, time_s))

        def recommend_many(self, requests):
            from aisys.serving.recommender import Recommendation

            self.log += [("request", r.now) for r in requests]
            return [Recommendation([]) for _ in requests]

    recorder = Recording()
    served_lists(recorder, data, test, live=live)
    requests = [entry for entry in recorder.log if entry[0] == "request"]
    assert [t for _, t in requests] == sorted(t for _, t in requests)
    for position, entry in enumerate(recorder.log):
        if entry[0] == "request":
            told = [e[2] for e in recorder.log[:position] if e[0] == "event"]
            assert all(t < entry[1] for t in told)
            assert set(told) == {t for t in live.times_s if t < entry[1]}
