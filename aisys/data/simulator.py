"""A seeded e-commerce shop simulator that produces events in ``EVENT_SCHEMA``.

The shop has a catalogue (items in categories, log-normal prices per category,
Zipf popularity), users with category tastes, and shopping sessions in which a
user views items, adds some to the cart and buys some of those. Sessions carry
sequential signal on purpose: the next view tends to stay in the category of the
previous one and often goes to that item's fixed "companion" item, so a
sequence model can beat a popularity baseline.

Values: ``value`` is 1.0 for ``view`` and ``add_to_cart`` and the price paid for
``purchase`` (revenue), so a purchase row carries the price in force at that time.

Drift knobs act on the second half of the period (the midpoint of ``days``):
``taste_shift`` redraws the tastes of that share of users, ``new_items`` launches
that many items (with high popularity), ``price_change`` scales every price.

Everything is drawn from one ``numpy.random.Generator`` seeded by ``cfg.seed``,
so the same config gives identical tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa

from aisys.config import SimulatorConfig
from aisys.schemas import EVENT_SCHEMA, TIMESTAMP_TYPE

# Behaviour constants: documented in docs/data.md. They are not config knobs
# because nothing downstream needs to tune them.
CONTINUE_IN_CATEGORY = 0.75  # P(next view stays in the previous item's category)
FOLLOW_COMPANION = 0.5  # P(a same-category step goes to the item's companion)
CART_PROBABILITY = 0.18  # P(add_to_cart | view)
PURCHASE_PROBABILITY = 0.45  # P(purchase | add_to_cart)
MEAN_GAP_SECONDS = 45.0  # mean time between two views in a session
SESSION_LENGTH_P = 0.25  # geometric parameter of session length (mean ~4 views)


@dataclass
class _Shop:
    """The drawn world: catalogue arrays and user tastes (before and after the midpoint)."""

    item_category: np.ndarray  # (I,) int
    base_price: np.ndarray  # (I,) float
    popularity: np.ndarray  # (I,) float, sums to 1 over base items
    launched_at_s: np.ndarray  # (I,) float seconds since start (0 for the base catalogue)
    companion: np.ndarray  # (I,) int: the item a session tends to move to next
    taste_before: np.ndarray  # (U, C)
    taste_after: np.ndarray  # (U, C)
    user_activity: np.ndarray  # (U,) sums to 1


def _parse_start(text: str) -> datetime:
    start = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    return start.astimezone(timezone.utc)


def _draw_tastes(rng: np.random.Generator, n: int, n_categories: int, strength: float) -> np.ndarray:
    """Dirichlet draws sharpened by ``strength`` (0 = uniform tastes)."""
    raw = rng.dirichlet(np.ones(n_categories), size=n)  # (n, C)
    sharp = raw ** strength
    return sharp / sharp.sum(axis=1, keepdims=True)


def _draw_shop(cfg: SimulatorConfig, rng: np.random.Generator) -> _Shop:
    n_base, n_new, n_cat = cfg.n_items, cfg.new_items, cfg.n_categories
    n_items = n_base + n_new
    item_category = rng.integers(0, n_cat, size=n_items)
    # Each category has its own price level; items scatter log-normally around it.
    category_log_mean = rng.uniform(np.log(5.0), np.log(200.0), size=n_cat)
    base_price = np.round(np.exp(rng.normal(category_log_mean[item_category], 0.35)), 2)
    # Zipf popularity over a random ranking of the base items.
    ranks = rng.permutation(n_base) + 1
    weights = ranks.astype(float) ** -cfg.popularity_exponent
    if n_new:
        # New items arrive as hits: they take the weights of the top ranks.
        new_weights = (np.arange(n_new) + 1.0) ** -cfg.popularity_exponent
        weights = np.concatenate([weights, new_weights])
    popularity = weights / weights[:n_base].sum()
    half = cfg.days * 86400 / 2
    launched_at_s = np.concatenate([np.zeros(n_base), np.full(n_new, half)])
    companion = np.empty(n_items, dtype=np.int64)
    for cat in range(n_cat):
        members = np.flatnonzero(item_category == cat)
        # A fixed random cycle through the category: item -> its companion.
        order = rng.permutation(members)
        companion[order] = np.roll(order, -1)
    taste_before = _draw_tastes(rng, cfg.n_users, n_cat, cfg.taste_strength)
    taste_after = taste_before.copy()
    n_shift = int(round(cfg.taste_shift * cfg.n_users))
    if n_shift:
        shifted = rng.choice(cfg.n_users, size=n_shift, replace=False)
        taste_after[shifted] = _draw_tastes(rng, n_shift, n_cat, cfg.taste_strength)
    activity = rng.lognormal(0.0, 0.8, size=cfg.n_users)
    return _Shop(
        item_category=item_category,
        base_price=base_price,
        popularity=popularity,
        launched_at_s=launched_at_s,
        companion=companion,
        taste_before=taste_before,
        taste_after=taste_after,
        user_activity=activity / activity.sum(),
    )


def simulate_catalogue(cfg: SimulatorConfig) -> pa.Table:
    """The item catalogue: ``item_id``, ``category``, ``price`` (base price), and
    ``launched_at`` when ``cfg.new_items`` > 0 (start for base items, the midpoint for new ones)."""
    shop = _draw_shop(cfg, np.random.default_rng(cfg.seed))
    n_items = len(shop.item_category)
    columns = {
        "item_id": pa.array([f"i{n}" for n in range(n_items)], pa.string()),
        "category": pa.array([f"c{c}" for c in shop.item_category], pa.string()),
        "price": pa.array(shop.base_price, pa.float64()),
    }
    if cfg.new_items:
        start_us = int(_parse_start(cfg.start).timestamp() * 1_000_000)
        launched = start_us + (shop.launched_at_s * 1_000_000).astype(np.int64)
        columns["launched_at"] = pa.array(launched, pa.int64()).cast(TIMESTAMP_TYPE)
    return pa.table(columns)


def simulate_products(cfg: SimulatorConfig) -> pa.Table:
    """The shop's product table (``aisys.data.products.PRODUCT_SCHEMA``): every item, base and new,
    with a seeded name, brand and colour, its category id (``c<n>``, as events carry it) and
    department name ("Kitchen"), and its base price. Naming never touches the simulation's random
    stream, so events are the same with or without it."""
    from aisys.data.products import simulator_products

    shop = _draw_shop(cfg, np.random.default_rng(cfg.seed))
    return simulator_products(shop.item_category.tolist(), shop.base_price.tolist(), cfg.seed)


def _pick(rng: np.random.Generator, weights: np.ndarray) -> int:
    total = weights.sum()
    return int(np.searchsorted(np.cumsum(weights), rng.random() * total, side="right").clip(0, len(weights) - 1))


def simulate_events(cfg: SimulatorConfig) -> pa.Table:
    """Simulate ``cfg.n_sessions`` sessions; returns ``EVENT_SCHEMA`` rows sorted by timestamp.

    Event ids are ``sim-{seed}-{n}`` with ``n`` the row's position in the
    sorted output; user ids ``u{n}``, item ids ``i{n}``, categories ``c{n}``.
    """
    rng = np.random.default_rng(cfg.seed)
    shop = _draw_shop(cfg, rng)
    period_s = cfg.days * 86400
    half = period_s / 2
    session_start = np.sort(rng.uniform(0, period_s, size=cfg.n_sessions))
    session_user = rng.choice(cfg.n_users, size=cfg.n_sessions, p=shop.user_activity)
    lengths = np.minimum(rng.geometric(SESSION_LENGTH_P, size=cfg.n_sessions), cfg.max_session_length)

    n_cat = cfg.n_categories
    category_members = [np.flatnonzero(shop.item_category == c) for c in range(n_cat)]
    rows_t: list[float] = []
    rows_user: list[int] = []
    rows_item: list[int] = []
    rows_type: list[int] = []  # 0 view, 1 add_to_cart, 2 purchase
    for s in range(cfg.n_sessions):
        t = session_start[s]
        user = session_user[s]
        late = t >= half
        taste = shop.taste_after[user] if late else shop.taste_before[user]
        live = shop.launched_at_s <= t  # new items exist only after launch
        item = -1
        for _ in range(lengths[s]):
            if item >= 0 and rng.random() < CONTINUE_IN_CATEGORY:
                companion = shop.companion[item]
                if rng.random() < FOLLOW_COMPANION and live[companion]:
                    item = int(companion)
                else:
                    members = category_members[shop.item_category[item]]
                    members = members[live[members]]
                    item = int(members[_pick(rng, shop.popularity[members])])
            else:
                category = _pick(rng, taste)
                members = category_members[category]
                members = members[live[members]]
                if len(members) == 0:  # an empty category: fall back to the whole live catalogue
                    members = np.flatnonzero(live)
                item = int(members[_pick(rng, shop.popularity[members])])
            rows_t.append(t)
            rows_user.append(user)
            rows_item.append(item)
            rows_type.append(0)
            if rng.random() < CART_PROBABILITY:
                t_cart = t + rng.uniform(1, 20)
                rows_t.append(t_cart)
                rows_user.append(user)
                rows_item.append(item)
                rows_type.append(1)
                if rng.random() < PURCHASE_PROBABILITY:
                    rows_t.append(t_cart + rng.uniform(5, 120))
                    rows_user.append(user)
                    rows_item.append(item)
                    rows_type.append(2)
            t += rng.exponential(MEAN_GAP_SECONDS) + 1.0
    return _events_table(cfg, shop, rows_t, rows_user, rows_item, rows_type, half)


def _events_table(cfg, shop, rows_t, rows_user, rows_item, rows_type, half) -> pa.Table:
    t = np.asarray(rows_t)
    user = np.asarray(rows_user, dtype=np.int64)
    item = np.asarray(rows_item, dtype=np.int64)
    etype = np.asarray(rows_type, dtype=np.int64)
    # Stable sort keeps generation order for equal timestamps: deterministic ids.
    offset_us = np.round(t * 1_000_000).astype(np.int64)
    order = np.argsort(offset_us, kind="stable")
    offset_us, user, item, etype, t = offset_us[order], user[order], item[order], etype[order], t[order]
    price = shop.base_price[item] * np.where(t >= half, 1.0 + cfg.price_change, 1.0)
    price = np.round(price, 2)
    value = np.where(etype == 2, price, 1.0)
    start_us = int(_parse_start(cfg.start).timestamp() * 1_000_000)
    type_names = np.array(["view", "add_to_cart", "purchase"])
    n = len(t)
    return pa.Table.from_arrays(
        [
            pa.array([f"sim-{cfg.seed}-{k}" for k in range(n)], pa.string()),
            pa.array(np.char.add("u", user.astype(str)), pa.string()),
            pa.array(np.char.add("i", item.astype(str)), pa.string()),
            pa.array(type_names[etype], pa.string()),
            pa.array(value, pa.float64()),
            pa.array(start_us + offset_us, pa.int64()).cast(TIMESTAMP_TYPE),
            pa.array(np.char.add("c", shop.item_category[item].astype(str)), pa.string()),
            pa.array(price, pa.float64()),
        ],
        schema=EVENT_SCHEMA,
    )


def drift_midpoint(cfg: SimulatorConfig) -> datetime:
    """The moment (UTC) half-way through the period, where the drift knobs take effect."""
    return _parse_start(cfg.start) + timedelta(seconds=cfg.days * 86400 / 2)
