"""The session store stays bounded: a flood of new user ids evicts the least recently used, memory stays flat."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from aisys.config import OnlineConfig
from aisys.serving.session_store import EMPTY_SESSION, InMemorySessionStore, SessionTable, UserSession


def test_the_least_recently_used_user_is_evicted_first():
    table = SessionTable(max_items=5, max_users=3)
    for user in ("a", "b", "c"):
        table.apply(user, f"e-{user}", "i1", "view")
    table.get_many(["a"])  # a read counts as use: b is now the oldest
    table.apply("d", "e-d", "i2", "view")
    assert len(table) == 3 and table.evicted == 1
    assert table.get_many(["b"]) == [EMPTY_SESSION]  # evicted: answered like a new user
    assert table.get_many(["a"])[0].items == ("i1",)
    assert not table.is_replay("b", "e-b")  # its replay memory went with it


def test_reads_of_unknown_users_create_nothing():
    table = SessionTable(max_users=2)
    table.get_many([f"ghost-{n}" for n in range(100)])
    assert len(table) == 0


def test_a_snapshot_larger_than_the_cap_is_cut_to_it():
    table = SessionTable(max_users=10)
    sessions = {f"u{n}": UserSession(items=("i1",), last_event_id=f"e{n}") for n in range(50)}
    assert table.bulk_load(sessions, "snap") == 50
    assert len(table) == 10 and table.evicted == 40


def test_a_flood_of_new_ids_keeps_entries_and_memory_bounded():
    cap = 2_000
    store = InMemorySessionStore(max_items=20, max_users=cap)

    async def flood(start: int, n: int) -> None:
        for k in range(start, start + n):
            await store.apply(f"anon-{k:08d}", f"e{k}", f"item{k % 50}", "view")

    tracemalloc.start()
    try:
        asyncio.run(flood(0, cap))  # fill to the cap...
        full, _ = tracemalloc.get_traced_memory()
        asyncio.run(flood(cap, 10 * cap))  # ...then 10x more new users
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(store.table) == cap and store.table.evicted == 10 * cap
    assert len(store.table._recent) == cap
    # Kept, 11x the users would take ~11x the memory; evicted, it stays what the cap costs.
    assert after < 1.2 * full, (full, after)


def test_the_cap_is_a_validated_setting():
    assert OnlineConfig().max_sessions == 200_000
    with pytest.raises(ValueError):
        OnlineConfig(max_sessions=0)
