"""The model lifecycle sections: the registry, the promotion gate, the drift monitor and the demo."""

from __future__ import annotations

from pydantic import Field

from aisys.config.base import _Section


class RegistryConfig(_Section):
    model_name: str = "aisys-recommender"
    champion_alias: str = "champion"


class GateConfig(_Section):
    """The promotion gate: a candidate beats the champion by a margin and passes the guardrails."""

    metric: str = Field("ndcg@10", description="Primary metric compared on the same holdout.")
    min_improvement: float = Field(0.0, description="Relative margin over the champion (0.01 = +1%).")
    min_coverage: float = Field(0.05, ge=0, le=1, description="Lowest catalogue coverage@10 allowed.")
    max_popularity_ratio: float = Field(
        1.5, gt=0, description="Highest mean popularity of recommendations, relative to the champion's."
    )
    segment_tolerance: float = Field(
        0.10, ge=0, description="No segment may be worse than the champion's by more than this (relative)."
    )
    min_segment_users: int = Field(20, ge=1, description="Segments smaller than this are not judged.")
    segment_alpha: float = Field(
        0.05, ge=0, lt=1,
        description="A segment below its floor fails only if the shortfall is significant (one-sided paired test "
        "over its users, p < segment_alpha); 0 fails any point estimate below the floor.",
    )


class MonitorConfig(_Section):
    """The drift monitor actor and the retrain policy (owned by ``aisys.monitoring``)."""

    enabled: bool = Field(
        True, description="Serving replicas forward live events and served lists to the monitor actor."
    )
    window_events: int = Field(5000, ge=10, description="Sliding window of live events compared to the reference.")
    check_every_events: int = Field(500, ge=1, description="Fast drift statistics every N events.")
    report_every_s: float = Field(3600.0, gt=0, description="Evidently report at least this often.")
    psi_threshold: float = Field(0.2, gt=0, description="PSI above this counts as drift.")
    drift_consecutive_checks: int = Field(3, ge=1, description="Checks in a row above threshold to trigger.")
    hit_rate_horizon_events: int = Field(5, ge=1, description="A list is a hit if the user interacts with it within N events.")
    hit_rate_drop: float = Field(0.2, ge=0, le=1, description="Relative online hit-rate drop that triggers.")
    min_new_events: int = Field(50_000, ge=1, description="New lake events that trigger a retrain by themselves.")
    cooldown_s: float = Field(6 * 3600.0, ge=0, description="Least time between two retrains.")
    max_retrains_per_day: int = Field(4, ge=0)
    train_window_days: int | None = Field(None, ge=1, description="Train on the last N days of the snapshot (None: all).")
    profile_bins: int = Field(10, ge=2, description="Quantile bins per numeric feature in the reference profile.")
    report_on_drift: bool = Field(True, description="Write an Evidently report when a check first sees drift.")
    hit_rate_min_lists: int = Field(
        200, ge=1, description="Judged lists a model version needs before its hit-rate baseline is set and compared."
    )
    hit_rate_window_lists: int = Field(1000, ge=1, description="Recent judged lists the online hit-rate is taken over.")
    hit_rate_drop_alpha: float = Field(
        0.05, ge=0, lt=1,
        description="The hit-rate drop must also be significant: one-sided two-proportion z-test p-value below "
        "this (0 disables the test). Small windows swing by chance; this keeps them from triggering.",
    )


class DemoConfig(_Section):
    n_events: int = Field(300, ge=0, description="Live events the demo posts over HTTP.")
    n_requests: int = Field(300, ge=1, description="Recommendation requests the demo sends after the live replay (every fifth for an unknown visitor).")
    bad_row_share: float = Field(0.02, ge=0, lt=1, description="Share of deliberately broken raw rows.")
    duplicate_share: float = Field(0.02, ge=0, lt=1, description="Share of duplicated raw rows.")

