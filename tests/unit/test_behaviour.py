"""Behavioural tests of a trained SASRec served by the Recommender (invariance, directional, minimum functionality).

One small model is trained in plain torch on simulator data (plus one user with a planted i -> j habit) once for
the module, in a few seconds. Each test states a behaviour a shopper would notice.
"""

from datetime import timedelta

import numpy as np
import pyarrow as pa
import pytest
import torch

from aisys.config import SimulatorConfig
from aisys.data.simulator import simulate_events
from aisys.features.sequences import build_vocabulary, user_histories
from aisys.models.bundle import ModelBundle
from aisys.models.sasrec import MODEL_KIND, SASRec, SASRecConfig, cpu_state_dict
from aisys.serving.recommender import Recommender
from aisys.serving.rules import excluded_items
from aisys.serving.session_store import SessionTable
from aisys.training.loop import iterate_batches, seed_everything, train_epoch, training_examples

MAX_LEN = 20
HABIT_USER = "habit-user"
HABIT_REPEATS = 10


def planted_habit(events: pa.Table) -> tuple[pa.Table, str, str]:
    """Append views i, j, i, j, ... by one user, with i and j in different categories (not a simulator pattern)."""
    items = events.column("item_id").to_pylist()
    categories = dict(zip(items, events.column("category").to_pylist()))
    ranked = sorted(set(items), key=items.count, reverse=True)
    i = ranked[len(ranked) // 2]  # a mid-popularity item: the habit, not popularity, must put j first
    j = next(item for item in ranked[len(ranked) // 2 :] if categories[item] != categories[i])
    t0 = events.column("timestamp")[-1].as_py() + timedelta(minutes=5)
    rows = [(i if n % 2 == 0 else j) for n in range(2 * HABIT_REPEATS)]
    extra = pa.table(
        {
            "event_id": [f"habit-{n}" for n in range(len(rows))],
            "user_id": [HABIT_USER] * len(rows),
            "item_id": rows,
            "event_type": ["view"] * len(rows),
            "value": [1.0] * len(rows),
            "timestamp": [t0 + timedelta(minutes=n) for n in range(len(rows))],
            "category": [categories[item] for item in rows],
            "price": [1.0] * len(rows),
        },
        schema=events.schema,
    )
    return pa.concat_tables([events, extra]), i, j


@pytest.fixture(scope="module")
def trained():
    """(Recommender, events table, habit items i and j): a SASRec trained on every user's full history."""
    torch.set_num_threads(1)
    seed_everything(0)
    sim = SimulatorConfig(seed=3, n_users=150, n_items=80, n_categories=6, n_sessions=1500, days=10)
    events, i, j = planted_habit(simulate_events(sim))
    vocab = build_vocabulary(events, {"view": 1.0, "add_to_cart": 2.0, "purchase": 3.0})
    histories = user_histories(events, vocab.item_index())
    config = SASRecConfig(
        n_items=vocab.n_items, max_seq_len=MAX_LEN, embedding_dim=32, n_layers=1, n_heads=2, dropout=0.1
    )
    model = SASRec(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
    inputs, targets = training_examples(histories, MAX_LEN)
    for epoch in range(12):
        train_epoch(model, iterate_batches(inputs, targets, 64, seed=epoch), optimizer)
    bundle = ModelBundle(MODEL_KIND, config.to_dict(), vocab.item_ids, vocab.item_popularity,
                         cpu_state_dict(model), vocab.item_categories, max_seq_len=MAX_LEN)
    return Recommender(bundle), events, i, j


def replay(events: pa.Table, users: set[str] | None = None, rename: dict[str, str] | None = None) -> SessionTable:
    """A session table fed the events (of ``users``, renamed by ``rename``) in order, as serving would be."""
    table = SessionTable()
    rows = zip(*(events.column(c).to_pylist() for c in ("event_id", "user_id", "item_id", "event_type")))
    for event_id, user, item, event_type in rows:
        if users is None or user in users:
            table.record((rename or {}).get(user, user), event_id, item, event_type)
    return table


def top(recommender: Recommender, table: SessionTable, user: str, policy: str | None = None, k: int = 10):
    """What serving shows ``user``: exclusion per ``policy`` (None: nothing excluded)."""
    session = table.get_many([user])[0]
    exclude = excluded_items(session, policy) if policy else frozenset()
    return recommender.recommend(session, k, exclude)


def active_users(events: pa.Table, n: int) -> list[str]:
    users = events.column("user_id").to_pylist()
    return sorted({u for u in users if users.count(u) >= 8 and u != HABIT_USER})[:n]


def test_invariance_the_user_id_does_not_change_the_recommendations(trained):
    recommender, events, _, _ = trained
    user = active_users(events, 1)[0]
    names = [user, "someone-else@example.com", "ユーザー 17"]
    lists = []
    for name in names:
        table = replay(events, {user}, rename={user: name})
        lists.append([(item.item_id, item.score) for item in top(recommender, table, name).items])
    assert len(lists[0]) == 10
    assert lists[0] == lists[1] == lists[2]


def test_directional_viewing_a_category_raises_its_share_in_the_top_10(trained):
    recommender, events, _, _ = trained
    bundle = recommender.bundle
    categories = np.asarray(bundle.item_categories, dtype=object)
    rng = np.random.default_rng(0)
    users = active_users(events, 25)
    table = replay(events, set(users))
    before_shares, after_shares = [], []
    for user in users:
        # "seen" exclusion: the viewed items themselves cannot be what raises the share.
        shown = top(recommender, table, user, policy="seen").items
        shares = {c: sum(item.category == c for item in shown) for c in set(categories[1:])}
        target = min(shares, key=lambda c: (shares[c], c))  # the category this user is shown least
        members = [bundle.item_ids[n] for n in np.flatnonzero(categories == target)]
        for n, item in enumerate(rng.choice(members, size=3, replace=False)):
            table.record(user, f"extra-{user}-{n}", str(item), "view")
        after = top(recommender, table, user, policy="seen").items
        before_shares.append(shares[target])
        after_shares.append(sum(item.category == target for item in after))
    rises = sum(a > b for a, b in zip(after_shares, before_shares))
    assert np.mean(after_shares) > np.mean(before_shares) + 1.0, (before_shares, after_shares)
    assert rises >= 0.8 * len(users), (before_shares, after_shares)


def test_minimum_functionality_a_learned_habit_i_then_j_puts_j_near_the_top_after_i(trained):
    recommender, events, i, j = trained
    table = replay(events, {HABIT_USER})
    assert table.get_many([HABIT_USER])[0].items[-2:] == (i, j)
    table.record(HABIT_USER, "now", i, "view")
    shown = [item.item_id for item in top(recommender, table, HABIT_USER).items]
    assert j in shown[:5], (i, j, shown)  # i itself (a reminder) and other recent items may come first
    # j is not what the model puts after i for anyone: a newcomer who only viewed i is not shown j first,
    # so the habit was learned from the user's sequence, not from j's popularity.
    newcomer = SessionTable()
    newcomer.record("newcomer", "e1", i, "view")
    assert [item.item_id for item in top(recommender, newcomer, "newcomer").items][0] != j


def test_purchased_items_are_excluded_when_the_exclusion_is_applied(trained):
    recommender, events, _, _ = trained
    # The simulator's view -> add_to_cart -> purchase of one item teaches the model to rank a just-bought item
    # high again: exactly what the exclusion must stop.
    buyers = sorted({u for u, t in zip(events.column("user_id").to_pylist(), events.column("event_type").to_pylist())
                     if t == "purchase"})
    table = replay(events, set(buyers))
    checked = 0
    for user in buyers:
        session = table.get_many([user])[0]
        unfiltered = [item.item_id for item in top(recommender, table, user).items]
        if not session.purchased & set(unfiltered):
            continue
        filtered = [item.item_id for item in top(recommender, table, user, policy="purchased").items]
        assert not session.purchased & set(filtered), user
        assert len(filtered) == 10
        checked += 1
    assert checked >= 10, "the model should rank some buyers' purchases in their unfiltered top 10"
