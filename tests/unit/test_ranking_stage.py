"""The multistage model's ranking stage: the blend-or-ranker choice on valid, the ranker inside the bundle, the
online item activity reaching it through posted events, and the response cache keyed by the request's context."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import numpy as np
import pytest

from aisys.config import OnlineConfig
from aisys.features.activity import ItemActivity, PointInTimeActivity
from aisys.features.candidates import candidate_features
from aisys.gateway.cache import ResponseCache
from aisys.models.baselines import standardize_rows
from aisys.models.blend_tuning import BlendChoice, blend_z_scores, tune_blend
from aisys.models.bundle import MULTISTAGE_RANKER_FEATURE_SET_VERSION, ModelBundle, UnknownBundleVersion
from aisys.models.context_blend import gap_buckets
from aisys.models.multistage import RankedMultistageScorer, build_scorer
from aisys.models.ranker import (
    ONLINE_RANKER_FEATURE_SET,
    RankerSettings,
    candidate_labels,
    fit_ranker_holding_out,
    ranker_document,
)
from aisys.models.ranking_choice import ValidTask, choose_ranking
from aisys.serving.api_models import EventIn, ModelOut
from aisys.serving.event_log import InMemoryEventLog
from aisys.serving.recommender import Recommender, ScoreRequest
from aisys.serving.rules import InMemoryInventory
from aisys.serving.service import OnlineService, ServedModel
from aisys.serving.session_store import InMemorySessionStore, UserSession
from tests.unit.test_multistage import N_ITEMS, multistage_bundle

DAY = 86_400.0
SMALL = RankerSettings(num_leaves=4, learning_rate=0.1, min_data_in_leaf=20, max_rounds=80, early_stopping_rounds=20)


def hot_item_world(n_users: int, n_items: int, seed: int):
    """Users whose next item is whatever was hot in the hour before their request (20 events of it by others)."""
    rng = np.random.default_rng(seed)
    request_times = (np.arange(n_users) + 1) * 3 * DAY
    targets = rng.integers(1, n_items + 1, n_users)
    histories = [[int(i) for i in rng.choice(np.setdiff1d(np.arange(1, n_items + 1), [t]), 3, replace=False)]
                 for t in targets]
    items = np.concatenate([np.full(20, t) for t in targets] + [rng.integers(1, n_items + 1, 30 * n_users)])
    times = np.concatenate([t - rng.uniform(60, 3_600, 20) for t in request_times]
                           + [rng.uniform(0, request_times[-1], 30 * n_users)])
    return histories, targets, request_times, items, times


def blend_of(choice: BlendChoice, z: dict[str, np.ndarray], gaps: np.ndarray) -> np.ndarray:
    columns = [choice.stages.index(n) for n in choice.active_stages()]
    weights = np.asarray(choice.bucket_weights)[gap_buckets(gaps, choice.gap_thresholds)][:, columns]
    return blend_z_scores([z[n] for n in choice.active_stages()], weights)


def valid_task(raw: dict[str, np.ndarray], histories, targets, request_times, items, times) -> ValidTask:
    gaps = np.full(len(targets), 600.0)
    z = {n: standardize_rows(m) for n, m in raw.items()}
    return ValidTask(
        raw=raw, histories=histories, targets=targets, gaps=gaps, request_times=request_times,
        activity=PointInTimeActivity(raw["sasrec"].shape[1] - 1, items, times), categories=None,
        tune=lambda rows: tune_blend({n: m[rows] for n, m in z.items()}, targets[rows],
                                     [histories[i] for i in rows], gaps[rows]),
        blend_for=lambda choice, scores, g: blend_of(choice, {n: standardize_rows(m) for n, m in scores.items()}, g),
        depth=50,
    )


def noise(rng, n_users, n_items):
    scores = rng.normal(size=(n_users, n_items + 1))
    scores[:, 0] = -np.inf
    return scores


def test_auto_keeps_the_ranker_when_it_wins_out_of_fold_and_the_blend_when_it_does_not():
    n_users, n_items = 240, 30
    histories, targets, request_times, items, times = hot_item_world(n_users, n_items, seed=1)
    rng = np.random.default_rng(2)
    # The generators know nothing; what is hot right now (the item activity as of the request) knows the target.
    task = valid_task({"sasrec": noise(rng, n_users, n_items), "pop": noise(rng, n_users, n_items)},
                      histories, targets, request_times, items, times)
    decision = choose_ranking("auto", task, folds=3, settings=SMALL)
    assert decision.chosen == "lgbm" and decision.ranker_valid_ndcg > decision.blend_valid_ndcg + 0.3
    assert "ranker" in decision.reason and decision.folds == 3 and decision.paired_se > 0
    # A gain inside the comparison's own noise (here: a bar of a million standard errors) keeps the blend.
    assert choose_ranking("auto", task, folds=3, settings=SMALL, min_z=1e6).chosen == "blend"

    # SASRec puts every target first: nothing is left for a ranker to add, and a tie keeps the simpler blend.
    perfect = noise(rng, n_users, n_items)
    perfect[np.arange(n_users), targets] = 100.0
    task = valid_task({"sasrec": perfect, "pop": noise(rng, n_users, n_items)},
                      histories, targets, request_times, items, times)
    decision = choose_ranking("auto", task, folds=3, settings=SMALL)
    assert decision.chosen == "blend" and decision.blend_valid_ndcg == pytest.approx(1.0)


def test_blend_and_lgbm_are_taken_as_asked_and_anything_else_is_refused():
    assert choose_ranking("blend", None).chosen == "blend"
    assert choose_ranking("lgbm", None).chosen == "lgbm"
    with pytest.raises(ValueError, match="auto, blend, lgbm"):
        choose_ranking("xgboost", None)


def ranked_bundle() -> ModelBundle:
    """multistage_bundle() plus a ranker that learned "what is hot now comes first" and its item activity seed."""
    bundle = multistage_bundle()
    blend = build_scorer(bundle)
    histories, targets, request_times, items, times = hot_item_world(200, N_ITEMS, seed=4)
    gaps = np.full(len(targets), 600.0)
    raw = blend.stage_scores(histories)
    scores = {"blend": blend.blend_scores(raw, gaps), **raw}
    features = candidate_features(scores, histories, request_times, gaps, PointInTimeActivity(N_ITEMS, items, times),
                                  None, N_ITEMS)
    labels = candidate_labels(features, [[int(t)] for t in targets])
    ranker = fit_ranker_holding_out(features, labels, SMALL, 0.2, 0, ONLINE_RANKER_FEATURE_SET)
    seed = ItemActivity(N_ITEMS)
    seed.observe_many(items, times)
    bundle.feature_set_version = MULTISTAGE_RANKER_FEATURE_SET_VERSION
    bundle.model_config["ranking"] = {"depth": N_ITEMS, "chosen": "lgbm"}
    bundle.ranker, bundle.activity = ranker_document(ranker), seed.to_arrays()
    return bundle


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ranked_bundle()


def test_the_bundle_carries_the_ranker_and_scores_alike_after_a_round_trip(bundle, tmp_path):
    folder = bundle.save(tmp_path / "bundle")
    assert {"ranker.json", "activity.npz", "stages.npz"} <= {p.name for p in folder.iterdir()}
    loaded = ModelBundle.load(folder)
    scorer = build_scorer(loaded)
    assert isinstance(scorer, RankedMultistageScorer)
    histories, gaps, now = [[1, 2, 3], [5]], np.array([60.0, np.nan]), np.array([1e7, np.nan])
    assert np.array_equal(build_scorer(bundle).score_sessions(histories, gaps, now),
                          scorer.score_sessions(histories, gaps, now))


def test_a_bundle_whose_ranker_names_an_unknown_feature_set_fails_clearly(bundle, tmp_path):
    folder = bundle.save(tmp_path / "bundle")
    document = json.loads((folder / "ranker.json").read_text())
    document["feature_set"] = "ranker-v9"
    (folder / "ranker.json").write_text(json.dumps(document))
    with pytest.raises(UnknownBundleVersion, match="ranker-v9") as error:
        build_scorer(ModelBundle.load(folder))
    assert ONLINE_RANKER_FEATURE_SET in str(error.value)
    # A folder that says multistage-v2 but lost its ranker is named as incomplete.
    (folder / "ranker.json").unlink()
    with pytest.raises(ValueError, match="ranker.json"):
        build_scorer(ModelBundle.load(folder))


def top(recommender: Recommender, session: UserSession, now: float) -> list[str]:
    return [i.item_id for i in recommender.recommend_many([ScoreRequest(session, 3, now=now)])[0].items]


def test_live_events_move_what_the_ranker_ranks_first(bundle):
    recommender = Recommender(bundle)
    now = float(ItemActivity.from_arrays(bundle.activity).clock) + 30 * DAY  # the seed has gone cold
    session = UserSession(items=("i01", "i02"), last_event_id="e", last_event_time=now - 600)
    before = top(recommender, session, now)
    hot = next(f"i{i:02d}" for i in range(N_ITEMS, 2, -1) if f"i{i:02d}" not in before)
    for n in range(20):
        assert recommender.observe_event(hot, now - 60 - n)
    assert top(recommender, session, now)[0] == hot
    assert not recommender.observe_event("not-an-item", now)  # unknown items are not counted


def make_service(bundle: ModelBundle, cache: ResponseCache | None = None) -> OnlineService:
    info = ModelOut(name="aisys-recommender", version="1", alias="champion", run_id="r", snapshot_id="s")
    return OnlineService(store=InMemorySessionStore(), event_log=InMemoryEventLog(), inventory=InMemoryInventory(),
                         online=OnlineConfig(), champion=ServedModel(Recommender(bundle), info), cache=cache)


def test_posted_events_reach_the_served_models_item_activity(bundle):
    service = make_service(bundle)
    scorer = service.models["champion"].recommender.scorer
    when = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)
    before = scorer.activity.item_features(np.array([7]), np.array([when.timestamp()]))[-1][0]

    async def post():
        for n in range(3):
            await service.record_event(EventIn(event_id=f"e{n}", user_id="bob", item_id="i07", event_type="view",
                                               timestamp=when))
        await service.record_event(EventIn(event_id="e0", user_id="bob", item_id="i07", event_type="view",
                                           timestamp=when))  # a replay: not counted again

    asyncio.run(post())
    after = scorer.activity.item_features(np.array([7]), np.array([when.timestamp()]))[-1][0]
    assert np.expm1(after) - np.expm1(before) == pytest.approx(3.0)  # the all-time count


def test_the_response_cache_is_not_shared_across_gap_buckets(monkeypatch):
    cache = ResponseCache(ttl_s=1e9, max_entries=100)
    service = make_service(multistage_bundle(), cache)  # the blend: a bucket past one day since the last event
    clock = {"now": 1_000_000.0}
    monkeypatch.setattr("aisys.serving.service.time.time", lambda: clock["now"])

    async def scenario():
        await service.record_event(EventIn(event_id="e1", user_id="bob", item_id="i01", event_type="view",
                                           timestamp=datetime.fromtimestamp(clock["now"], timezone.utc)))
        await service.recommend("bob", 3)
        clock["now"] += 600  # same bucket, same last event: the cached list
        await service.recommend("bob", 3)
        clock["now"] += 2 * DAY  # came back: another bucket, computed afresh
        await service.recommend("bob", 3)

    asyncio.run(scenario())
    assert (cache.hits, cache.misses) == (1, 2)
def test_folds_keep_every_request_of_a_user_together():
    from aisys.models.ranking_choice import fold_assignment

    users = ["a", "b", "c", "a", "d", "b", "e", "f"]
    folds = fold_assignment(len(users), 3, seed=0, users=users)
    assert folds[0] == folds[3] and folds[1] == folds[5]
    assert set(folds.tolist()) == {0, 1, 2}
    # Without repeated users, the folds are those of a plain permutation of the requests.
    unique = fold_assignment(6, 3, seed=0, users=list("abcdef"))
    assert unique.tolist() == fold_assignment(6, 3, seed=0).tolist()
