"""The shop simulator: determinism, schema, funnel, skew, sequential signal, drift knobs."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from aisys.config import SimulatorConfig
from aisys.data.simulator import drift_midpoint, simulate_catalogue, simulate_events
from aisys.schemas import EVENT_SCHEMA

SMALL = dict(n_users=80, n_items=60, n_categories=6, n_sessions=600, days=10)


def _cfg(**kw) -> SimulatorConfig:
    return SimulatorConfig(**{**SMALL, **kw})


def test_same_config_gives_identical_events_and_other_seed_differs():
    a, b = simulate_events(_cfg()), simulate_events(_cfg())
    assert a.equals(b)
    assert not a.equals(simulate_events(_cfg(seed=8)))


def test_schema_ids_and_order():
    events = simulate_events(_cfg())
    assert events.schema.equals(EVENT_SCHEMA)
    ids = events.column("event_id").to_pylist()
    assert ids == [f"sim-7-{k}" for k in range(len(ids))]
    ts = events.column("timestamp").to_numpy()
    assert (np.diff(ts.astype("int64")) >= 0).all()
    assert all(u.startswith("u") for u in events.column("user_id").to_pylist())
    assert set(events.column("event_type").to_pylist()) == {"view", "add_to_cart", "purchase"}


def test_funnel_purchases_le_carts_le_views_per_user_item():
    df = simulate_events(_cfg()).to_pandas()
    counts = df.pivot_table(index=["user_id", "item_id"], columns="event_type", values="event_id",
                            aggfunc="count", fill_value=0)
    assert (counts["purchase"] <= counts["add_to_cart"]).all()
    assert (counts["add_to_cart"] <= counts["view"]).all()
    purchases = df[df.event_type == "purchase"]
    assert np.allclose(purchases["value"], purchases["price"])
    assert (df[df.event_type != "purchase"]["value"] == 1.0).all()


def test_popularity_is_skewed():
    views = simulate_events(_cfg(n_sessions=1500)).to_pandas().query("event_type == 'view'")
    counts = views.item_id.value_counts().to_numpy()
    top_decile = counts[: max(1, len(counts) // 10)].sum()
    assert top_decile / counts.sum() > 0.25  # uniform would give ~0.10


def test_next_item_is_predictable_from_previous_item():
    """Sequential signal: the companion-of-last-item rule predicts the next view far
    above what the most popular item does."""
    df = simulate_events(_cfg(n_sessions=1500)).to_pandas().query("event_type == 'view'")
    df = df.sort_values(["user_id", "timestamp"])
    prev = df.groupby("user_id").item_id.shift()
    pairs = df.assign(prev=prev).dropna(subset=["prev"])
    top_next = pairs.groupby("prev").item_id.agg(lambda s: s.value_counts().index[0])
    seq_hits = (pairs.item_id == pairs.prev.map(top_next)).mean()
    pop_hits = (pairs.item_id == df.item_id.value_counts().index[0]).mean()
    assert seq_hits > 3 * pop_hits


def test_catalogue_prices_positive_and_new_items_launch_half_way():
    cat = simulate_catalogue(_cfg())
    assert cat.column_names == ["item_id", "category", "price"]
    assert pc.min(cat.column("price")).as_py() > 0
    cat_new = simulate_catalogue(_cfg(new_items=5))
    assert cat_new.num_rows == 65 and "launched_at" in cat_new.column_names
    mid = drift_midpoint(_cfg())
    launched = cat_new.column("launched_at").to_pylist()
    assert all(t == mid for t in launched[60:]) and all(t < mid for t in launched[:60])


def test_new_items_appear_only_after_launch():
    cfg = _cfg(new_items=5)
    df = simulate_events(cfg).to_pandas()
    new = df[df.item_id.isin([f"i{n}" for n in range(60, 65)])]
    assert len(new) > 0
    assert (new.timestamp >= drift_midpoint(cfg)).all()


def test_price_change_applies_only_after_midpoint():
    base = simulate_events(_cfg()).to_pandas()
    raised = simulate_events(_cfg(price_change=0.5)).to_pandas()
    mid = drift_midpoint(_cfg())
    early, late = base.timestamp < mid, base.timestamp >= mid
    assert np.allclose(raised.price[early], base.price[early])
    assert np.allclose(raised.price[late], (base.price[late] * 1.5).round(2), atol=0.011)


def test_taste_shift_changes_late_category_mix_of_users():
    def late_mix(df, mid):
        late = df[df.timestamp >= mid]
        return late.groupby(["user_id", "category"]).size().unstack(fill_value=0)

    cfg = _cfg(n_sessions=1500)
    mid = drift_midpoint(cfg)
    base = simulate_events(cfg).to_pandas()
    shifted = simulate_events(_cfg(n_sessions=1500, taste_shift=1.0)).to_pandas()
    early_mix = base[base.timestamp < mid].groupby("category").size()
    same = late_mix(base, mid).sum().reindex(early_mix.index, fill_value=0)
    moved = late_mix(shifted, mid).sum().reindex(early_mix.index, fill_value=0)
    # Per-user preferences move: the share of each user's late views in their early
    # favourite category drops when tastes are redrawn.
    def fav_share(df):
        early = df[df.timestamp < mid].groupby("user_id").category.agg(lambda s: s.value_counts().index[0])
        late = df[df.timestamp >= mid]
        return (late.category == late.user_id.map(early)).mean()

    assert fav_share(shifted) < fav_share(base) - 0.1
    assert same.sum() > 0 and moved.sum() > 0
