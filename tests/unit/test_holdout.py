"""The gate's holdout (pure): leave-last-one-out targets, segment buckets, and per-user ranks on it."""

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest

from aisys.registry.gate import per_user_metric
from aisys.registry.holdout import activity_buckets, build_holdout, evaluate_on_holdout, popularity_buckets
from tests.unit.test_sequences import WEIGHTS, events_table


def holdout_events():
    """u1: a b c d (target d); u2: b c a (target a); u3: c b x (target x, an item only u3 has); u4: too short."""
    rows, t = [], 0
    for user, items in (("u1", "abcd"), ("u2", "bca"), ("u3", "cbx"), ("u4", "ab")):
        for item in items:
            t += 1
            rows.append((user, item, "view", t, None))
    return events_table(rows)


def test_activity_terciles_and_popularity_from_inputs_only():
    assert activity_buckets([1, 2, 3, 4, 5, 6]) == ["light", "light", "medium", "medium", "heavy", "heavy"]
    assert activity_buckets([]) == []
    catalogue = [f"i{n}" for n in range(10)]
    histories = [["i0"] * 5 + ["i1"] * 3 + ["i2", "i3", "i4"]]
    # i0 is the head (top 10% of 10 items = 1 item); i1..i4 the torso (next 40%); unseen and rare the tail.
    labels = popularity_buckets(["i0", "i1", "i4", "i9", "never-seen"], histories, catalogue)
    assert labels == ["head", "torso", "torso", "tail", "tail"]


def test_build_holdout_takes_each_users_last_interaction():
    holdout = build_holdout(holdout_events(), "snap-1", WEIGHTS, {"gender": {"u1": "F"}})
    assert holdout.holdout_id == "snap-1/loo-test"
    by_user = dict(zip(holdout.users, zip(holdout.histories, holdout.targets)))
    assert set(by_user) == {"u1", "u2", "u3"}  # u4 lacks the 3 interactions a holdout needs
    assert by_user["u1"] == (["a", "b", "c"], "d") and by_user["u3"] == (["c", "b"], "x")
    assert set(holdout.catalogue) == {"a", "b", "c", "d", "x"}
    assert holdout.segments["gender"] == [{"u1": "F"}.get(u, "unknown") for u in holdout.users]
    assert len(holdout.segments["user_activity"]) == len(holdout) == 3


class FixedScorer:
    """A numpy scorer (``score_next``): the same scores for every window, by vocabulary index."""

    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=np.float64)

    def score_next(self, windows):
        return np.tile(self.scores, (len(windows), 1))


def test_ranks_exclude_history_treat_unknown_targets_as_misses_and_agree_with_the_metrics():
    holdout = build_holdout(holdout_events(), "snap-1", WEIGHTS)
    # The model's own vocabulary lacks "x"; scores: d > a > c > b (index 0 is padding).
    item_ids = ["<pad>", "a", "b", "c", "d"]
    scorer = FixedScorer([0.0, 3.0, 1.0, 2.0, 4.0])
    metrics, segments, ranks = evaluate_on_holdout(scorer, item_ids, max_seq_len=5, holdout=holdout)
    rank = dict(zip(holdout.users, ranks.tolist()))
    assert rank["u1"] == 0  # a, b, c are u1's history: d is first among what is left
    assert rank["u2"] == 1  # history b, c; target a ranks after d, which u2 has not seen
    assert rank["u3"] == len(holdout.catalogue)  # "x" is unknown to the model: a miss
    assert metrics["hr@10"] == pytest.approx(np.mean(per_user_metric(ranks, "hr@10")))
    assert metrics["ndcg@10"] == pytest.approx(np.mean(per_user_metric(ranks, "ndcg@10")))
    assert sum(b["n_users"] for b in segments["user_activity"].values()) == len(holdout)


def ranked_holdout_events(start_s: float):
    """Eight users of the ranked bundle's items (i01..i12), each with three items then a new one: some come back
    within minutes, some days later; the first event at ``start_s`` (seconds since the epoch), a user every
    two days."""
    from datetime import datetime, timedelta, timezone

    from tests.unit.test_multistage import EVENT_SCHEMA, N_ITEMS

    t0 = datetime.fromtimestamp(start_s, tz=timezone.utc)
    rng = np.random.default_rng(3)
    table = {name: [] for name in EVENT_SCHEMA.names}
    for u in range(8):
        items = rng.choice(np.arange(1, N_ITEMS + 1), 4, replace=False)
        start = u * 2 * 86_400.0
        seconds = [start, start + 60, start + 120, start + 120 + (300 if u % 2 else 2 * 86_400)]
        for n, (item, s) in enumerate(zip(items, seconds)):
            for name, value in (("event_id", f"e{u}-{n}"), ("user_id", f"u{u}"), ("item_id", f"i{item:02d}"),
                                ("event_type", "view"), ("value", 1.0), ("timestamp", t0 + timedelta(seconds=s)),
                                ("category", "c"), ("price", 1.0)):
                table[name].append(value)
    return pa.Table.from_pydict(table, schema=EVENT_SCHEMA)


def test_the_gate_scores_a_ranked_bundle_at_each_target_time_as_the_serving_recommender_does():
    """A bundle whose ranking stage reads the request time (item activity as of now): the gate's rank of each
    target is the one the serving Recommender's scores give it, for the same session at the target's time."""
    from aisys.registry.holdout import report_for_bundle
    from aisys.serving.recommender import Recommender, ScoreRequest
    from aisys.serving.session_store import UserSession
    from tests.unit.test_ranking_stage import ranked_bundle

    from aisys.features.activity import ItemActivity

    bundle = ranked_bundle()  # its ranker learned "what is hot in the hour before the request comes first"
    activity = ItemActivity.from_arrays(bundle.activity)
    holdout = build_holdout(ranked_holdout_events(float(activity.clock) + 86_400.0), "snap-1", {"view": 1.0})
    # Each target is hot in the hour before its own request only (users are two days apart).
    for target, now in zip(holdout.targets, holdout.request_times):
        activity.observe_many(np.full(20, int(target[1:])), now - np.linspace(60.0, 3_000.0, 20))
    bundle.activity = activity.to_arrays()
    assert len(holdout.request_times) == len(holdout) == 8
    report = report_for_bundle(bundle, holdout)
    served = []
    for history, gap, now, target in zip(holdout.histories, holdout.gaps, holdout.request_times, holdout.targets):
        session = UserSession(items=tuple(history), last_event_time=now - gap)
        answer = Recommender(bundle).recommend_many([ScoreRequest(session, 100, frozenset(history), now)])[0]
        scores = {item.item_id: item.score for item in answer.items}
        # The gate's rule for ties (pessimistic): the target ranks after every other item scored as high.
        served.append(sum(score >= scores[target] for item, score in scores.items() if item != target))
    assert report.user_ranks == served
    # Without the request times the ranker would read the item activity as of training: other ranks.
    untimed = report_for_bundle(bundle, replace(holdout, request_times=[]))
    assert untimed.user_ranks != report.user_ranks
