"""The promotion gate: promotion, and a refusal for each guardrail, with the reason stated."""

import json
import math

import numpy as np
import pytest

from aisys.config import GateConfig
from aisys.registry.gate import EvalReport, decide, nonfinite_tensors

CFG = GateConfig(
    metric="ndcg@10",
    min_improvement=0.02,
    min_coverage=0.10,
    max_popularity_ratio=1.5,
    segment_tolerance=0.10,
    min_segment_users=20,
)


def report(version="1", holdout="snap-1:loo-test", segments=None, weights=None, **overrides) -> EvalReport:
    metrics = {
        "ndcg@10": 0.20,
        "hr@10": 0.35,
        "mrr@10": 0.15,
        "coverage@10": 0.40,
        "popularity@10": 100.0,
        "n_users": 500.0,
    }
    metrics.update(overrides)
    if segments is None:
        segments = {
            "user_activity": {
                "light": {"ndcg@10": 0.10, "n_users": 200},
                "heavy": {"ndcg@10": 0.30, "n_users": 300},
            },
            "target_popularity": {
                "head": {"ndcg@10": 0.40, "n_users": 480},
                "tail": {"ndcg@10": 0.05, "n_users": 5},
            },
        }
    return EvalReport(metrics, holdout, segments, weights or [], version)


def better(**overrides):
    """A candidate that beats the champion by 10% overall and in every segment."""
    segments = {
        "user_activity": {"light": {"ndcg@10": 0.11, "n_users": 200}, "heavy": {"ndcg@10": 0.33, "n_users": 300}},
        "target_popularity": {"head": {"ndcg@10": 0.44, "n_users": 480}, "tail": {"ndcg@10": 0.06, "n_users": 5}},
    }
    return report(version="2", segments=overrides.pop("segments", segments), **{"ndcg@10": 0.22, **overrides})


def failed_names(decision):
    return [c.name for c in decision.failed]


def test_a_better_candidate_is_promoted_with_every_check_passing():
    decision = decide(better(), report(), CFG)
    assert decision.promote, decision.reasons
    assert failed_names(decision) == []
    names = {c.name for c in decision.checks}
    assert {"same_holdout", "beats_champion:ndcg@10", "coverage", "popularity_bias"} <= names
    assert "segment:user_activity=light" in names
    assert decision.reasons[0].startswith("candidate (version 2) beats champion (version 1): ndcg@10 0.2200")
    json.dumps(decision.to_dict())  # the decision is logged as JSON


def test_refused_when_not_better_by_the_margin():
    # +1% is not the +2% margin.
    decision = decide(better(**{"ndcg@10": 0.202}), report(), CFG)
    assert not decision.promote
    assert failed_names(decision) == ["beats_champion:ndcg@10"]
    check = decision.failed[0]
    assert check.threshold == pytest.approx(0.204)
    assert "needs >= 0.2040" in decision.reasons[0]


def test_an_identical_model_is_refused_even_with_no_margin():
    same = report(version="2")
    decision = decide(same, report(), CFG.model_copy(update={"min_improvement": 0.0}))
    assert not decision.promote
    assert failed_names(decision) == ["beats_champion:ndcg@10"]


def test_refused_for_low_coverage():
    decision = decide(better(**{"coverage@10": 0.05}), report(), CFG)
    assert not decision.promote
    assert failed_names(decision) == ["coverage"]
    assert "coverage@10 0.0500; needs >= 0.1000" in decision.reasons[0]


def test_refused_for_popularity_bias():
    decision = decide(better(**{"popularity@10": 151.0}), report(), CFG)
    assert not decision.promote
    assert failed_names(decision) == ["popularity_bias"]
    assert "1.5x the champion's" in decision.reasons[0]
    # Just under the limit passes.
    assert decide(better(**{"popularity@10": 149.0}), report(), CFG).promote


def test_refused_when_a_judged_segment_regresses_beyond_tolerance():
    segments = {
        # light users lose 20% (> 10% tolerance) although the overall metric improves.
        "user_activity": {"light": {"ndcg@10": 0.08, "n_users": 200}, "heavy": {"ndcg@10": 0.35, "n_users": 300}},
        "target_popularity": {"head": {"ndcg@10": 0.44, "n_users": 480}, "tail": {"ndcg@10": 0.06, "n_users": 5}},
    }
    decision = decide(better(segments=segments), report(), CFG)
    assert not decision.promote
    assert failed_names(decision) == ["segment:user_activity=light"]
    assert "user_activity=light" in decision.reasons[0] and "tolerance 10%" in decision.reasons[0]


def test_small_segments_are_not_judged_and_small_drops_are_tolerated():
    segments = {
        # light: -5% is within the 10% tolerance; tail (5 users < 20) collapses but is not judged.
        "user_activity": {"light": {"ndcg@10": 0.095, "n_users": 200}, "heavy": {"ndcg@10": 0.33, "n_users": 300}},
        "target_popularity": {"head": {"ndcg@10": 0.44, "n_users": 480}, "tail": {"ndcg@10": 0.0, "n_users": 5}},
    }
    decision = decide(better(segments=segments), report(), CFG)
    assert decision.promote, decision.reasons
    tail = next(c for c in decision.checks if c.name == "segment:target_popularity=tail")
    assert tail.passed and "not judged" in tail.detail
    # With the bar lowered to 5 users, the collapsed tail is judged and refused.
    strict = decide(better(segments=segments), report(), CFG.model_copy(update={"min_segment_users": 5}))
    assert failed_names(strict) == ["segment:target_popularity=tail"]


def test_a_segment_missing_from_the_candidate_is_refused():
    segments = {"user_activity": {"heavy": {"ndcg@10": 0.33, "n_users": 300}}}
    decision = decide(better(segments=segments), report(), CFG)
    assert not decision.promote
    assert "segment:user_activity=light" in failed_names(decision)
    assert "segment:target_popularity=head" in failed_names(decision)


def test_reports_on_different_holdouts_are_refused_for_that_reason_alone():
    decision = decide(better(holdout="snap-2:loo-test"), report(), CFG)
    assert not decision.promote
    assert failed_names(decision) == ["same_holdout"]
    assert len(decision.reasons) == 1
    assert "snap-2:loo-test" in decision.reasons[0] and "snap-1:loo-test" in decision.reasons[0]


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_candidate_metrics_are_refused(value):
    decision = decide(better(**{"ndcg@10": value}), report(), CFG)
    assert not decision.promote
    assert failed_names(decision) == ["candidate_metrics_finite"]
    assert "non-finite" in decision.reasons[0] and "ndcg@10" in decision.reasons[0]
    json.dumps(decision.to_dict())  # NaN is written as a string, not as invalid JSON


def test_non_finite_segment_metric_is_refused():
    segments = {"user_activity": {"light": {"ndcg@10": math.nan, "n_users": 200}}}
    decision = decide(better(segments=segments), report(), CFG)
    assert failed_names(decision) == ["candidate_metrics_finite"]
    assert "user_activity=light.ndcg@10" in decision.reasons[0]


def test_a_missing_metric_is_refused_with_its_name():
    candidate = better()
    del candidate.metrics["popularity@10"]
    decision = decide(candidate, report(), CFG)
    assert not decision.promote
    assert "popularity@10" in decision.reasons[0]


def test_nan_weights_are_refused_even_when_metrics_look_perfect():
    weights = nonfinite_tensors(
        {"item_emb.weight": np.array([[0.1, np.nan]]), "pos_emb.weight": np.ones((2, 2)), "steps": np.array([3])}
    )
    assert weights == ["item_emb.weight"]
    decision = decide(better(weights=weights, **{"ndcg@10": 1.0, "hr@10": 1.0}), report(), CFG)
    assert not decision.promote
    assert failed_names(decision) == ["candidate_weights_finite"]
    assert "item_emb.weight" in decision.reasons[0]


def test_nonfinite_tensors_reads_torch_tensors():
    torch = pytest.importorskip("torch")
    state = {"a": torch.zeros(3), "b": torch.tensor([1.0, float("inf")]), "c": torch.tensor([1, 2])}
    assert nonfinite_tensors(state) == ["b"]


def test_no_champion_promotes_when_guardrails_pass_and_says_so():
    decision = decide(better(), None, CFG)
    assert decision.promote
    assert "no champion" in decision.reasons[0]
    assert {c.name for c in decision.checks} == {"candidate_metrics_finite", "candidate_weights_finite", "coverage"}


def test_no_champion_still_refuses_a_failing_guardrail():
    assert failed_names(decide(better(**{"coverage@10": 0.01}), None, CFG)) == ["coverage"]
    assert failed_names(decide(better(**{"hr@10": math.nan}), None, CFG)) == ["candidate_metrics_finite"]


def test_a_broken_champion_report_refuses_rather_than_compares():
    decision = decide(better(), report(**{"ndcg@10": math.nan}), CFG)
    assert not decision.promote
    assert failed_names(decision) == ["champion_metrics_finite"]
