"""The data sections: sources (simulator, MovieLens), ingest validation and features."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aisys.config.base import _Section


class SimulatorConfig(_Section):
    """The seeded shop simulator. The drift knobs default to no drift."""

    seed: int = 7
    n_users: int = Field(500, ge=1)
    n_items: int = Field(300, ge=1)
    n_categories: int = Field(12, ge=1)
    n_sessions: int = Field(4000, ge=1, description="Shopping sessions to simulate.")
    popularity_exponent: float = Field(1.1, gt=0, description="Zipf exponent of item popularity.")
    taste_strength: float = Field(4.0, ge=0, description="How strongly users prefer their favourite categories.")
    max_session_length: int = Field(12, ge=1)
    start: str = Field("2026-01-01T00:00:00Z", description="Timestamp of the first session (ISO 8601).")
    days: int = Field(30, ge=1, description="Days the sessions are spread over.")
    # Drift knobs, applied to the second half of the simulated period when set.
    taste_shift: float = Field(0.0, ge=0, le=1, description="Share of users whose favourite categories change.")
    new_items: int = Field(0, ge=0, description="Items launched half-way through the period.")
    price_change: float = Field(0.0, description="Relative price change applied half-way (0.1 = +10%).")


class MovieLensConfig(_Section):
    """MovieLens-100K, read from the cache or from the ``recbole`` wheel."""

    path: str | None = Field(None, description="Folder with u.data/u.item/u.user or ml-100k.inter; None = cache.")
    recbole_version: str | None = Field(None, description="Pin the recbole wheel fetched for the data.")


class DataConfig(_Section):
    source: Literal["simulator", "movielens"] = "simulator"
    simulator: SimulatorConfig = SimulatorConfig()
    movielens: MovieLensConfig = MovieLensConfig()
    raw_dir: str | None = Field(None, description="Where `aisys data` writes raw event files; default <workspace>/raw.")
    raw_format: Literal["jsonl", "csv", "parquet"] = "jsonl"


class IngestConfig(_Section):
    min_timestamp: str = Field("1990-01-01T00:00:00Z", description="Older events are quarantined.")
    max_future_seconds: int = Field(86400, ge=0, description="Events this far past 'now' are quarantined.")
    max_id_length: int = Field(128, ge=1, description="Longer ids are quarantined.")


class FeaturesConfig(_Section):
    max_seq_len: int = Field(50, ge=1, description="Recent items per user that the model sees.")
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {"view": 1.0, "add_to_cart": 2.0, "purchase": 3.0, "rating": 1.0},
        description="Popularity weight of each event type.",
    )

