"""The gate's segment guardrail with per-user ranks: a shortfall must be significant (paired test over users)."""

import numpy as np
import pytest

from aisys.config import GateConfig
from aisys.registry.gate import EvalReport, decide, per_user_metric, segment_shortfall_p_value

CFG = GateConfig(metric="ndcg@10", min_improvement=0.0, min_coverage=0.0, segment_tolerance=0.10,
                 min_segment_users=20, segment_alpha=0.05)
N_CATALOGUE = 1000


def report_from_ranks(ranks, buckets, version) -> EvalReport:
    """An EvalReport whose overall and segment metrics are exactly what its per-user ranks give."""
    ranks = np.asarray(ranks)
    metrics = {f"{m}@10": float(per_user_metric(ranks, f"{m}@10").mean()) for m in ("ndcg", "hr", "mrr")}
    metrics.update({"coverage@10": 0.3, "popularity@10": 50.0, "n_users": float(ranks.size)})
    segments = {}
    for name, labels in buckets.items():
        labels = np.asarray(labels, dtype=object)
        segments[name] = {
            str(b): {"ndcg@10": float(per_user_metric(ranks[labels == b], "ndcg@10").mean()),
                     "n_users": int((labels == b).sum())}
            for b in sorted(set(labels))
        }
    return EvalReport(metrics, "snap:loo-test", segments, [], version, [int(r) for r in ranks],
                      {k: list(v) for k, v in buckets.items()})


@pytest.fixture
def holdout():
    """400 users: 340 light, 60 heavy; the champion hits 25% of light users and 12 of the heavy ones."""
    rng = np.random.default_rng(7)
    buckets = {"user_activity": ["light"] * 340 + ["heavy"] * 60}
    champion = np.full(400, N_CATALOGUE)
    champion[rng.choice(340, 85, replace=False)] = rng.integers(0, 10, 85)
    heavy_hits = 340 + rng.choice(60, 12, replace=False)
    champion[heavy_hits] = rng.integers(0, 10, 12)
    return buckets, champion, heavy_hits


def test_per_user_metric_matches_the_rank_definitions():
    ranks = np.array([0, 1, 9, 10, 500])
    assert per_user_metric(ranks, "hr@10").tolist() == [1, 1, 1, 0, 0]
    assert per_user_metric(ranks, "mrr@10").tolist() == pytest.approx([1.0, 0.5, 0.1, 0.0, 0.0])
    assert per_user_metric(ranks, "ndcg@10").tolist() == pytest.approx([1.0, 1 / np.log2(3), 1 / np.log2(11), 0, 0])
    with pytest.raises(ValueError, match="coverage@10"):
        per_user_metric(ranks, "coverage@10")


def test_shortfall_p_value_small_for_a_consistent_drop_large_for_noise():
    rng = np.random.default_rng(0)
    champion = rng.random(300)
    assert segment_shortfall_p_value(champion * 0.5, champion, 0.10) < 1e-6  # everyone loses half
    assert segment_shortfall_p_value(champion * 1.1, champion, 0.10) > 0.99  # everyone gains
    # A few hits moving between users: -25% on the point estimate, far from significant.
    champ = np.zeros(60)
    champ[:4] = 1.0
    cand = np.zeros(60)
    cand[2:5] = 1.0
    assert cand.mean() < 0.9 * champ.mean()
    assert segment_shortfall_p_value(cand, champ, 0.10) > 0.2
    # No spread at all: the shortfall is certain, or absent.
    assert segment_shortfall_p_value(np.zeros(30), np.ones(30), 0.10) == 0.0
    assert segment_shortfall_p_value(np.ones(30), np.ones(30), 0.10) == 1.0


def test_a_noisy_segment_drop_passes_a_real_one_is_refused(holdout):
    buckets, champion_ranks, heavy_hits = holdout
    champion = report_from_ranks(champion_ranks, buckets, "1")
    # Candidate: better overall (10 more light hits) and heavy users lose 3 of their 12 hits (-25% point).
    noisy = champion_ranks.copy()
    light_misses = np.flatnonzero(noisy[:340] == N_CATALOGUE)[:10]
    noisy[light_misses] = 3
    noisy[heavy_hits[:3]] = N_CATALOGUE
    decision = decide(report_from_ranks(noisy, buckets, "2"), champion, CFG)
    heavy = next(c for c in decision.checks if c.name == "segment:user_activity=heavy")
    assert heavy.candidate < heavy.threshold  # below the floor on the point estimate ...
    assert heavy.passed and "but not significantly" in heavy.detail  # ... by an amount noise explains
    assert decision.promote, decision.reasons

    # Heavy users lose every hit: significant, refused, and the reason gives the p-value.
    collapsed = noisy.copy()
    collapsed[heavy_hits] = N_CATALOGUE
    decision = decide(report_from_ranks(collapsed, buckets, "3"), champion, CFG)
    assert not decision.promote
    assert [c.name for c in decision.failed] == ["segment:user_activity=heavy"]
    assert "and significantly" in decision.reasons[0] and "p=0.000" in decision.reasons[0]


def test_alpha_zero_or_no_per_user_ranks_keeps_the_point_rule(holdout):
    buckets, champion_ranks, heavy_hits = holdout
    champion = report_from_ranks(champion_ranks, buckets, "1")
    noisy = champion_ranks.copy()
    noisy[np.flatnonzero(noisy[:340] == N_CATALOGUE)[:10]] = 3
    noisy[heavy_hits[:3]] = N_CATALOGUE
    candidate = report_from_ranks(noisy, buckets, "2")
    strict = decide(candidate, champion, CFG.model_copy(update={"segment_alpha": 0.0}))
    assert [c.name for c in strict.failed] == ["segment:user_activity=heavy"]
    candidate.user_ranks = []  # a report without per-user ranks cannot be paired
    assert [c.name for c in decide(candidate, champion, CFG).failed] == ["segment:user_activity=heavy"]


def test_to_dict_summarises_the_per_user_lists(holdout):
    buckets, champion_ranks, _ = holdout
    data = report_from_ranks(champion_ranks, buckets, "1").to_dict()
    assert data["user_ranks"] == 400 and "user_buckets" not in data
