"""The shared session actor: two handles (as two replicas hold) see one store; a snapshot seeds it once."""

import asyncio

import pytest

from aisys.serving.session_actor import (
    ActorSessionStore,
    drop_session_actor,
    get_or_create_session_actor,
    session_actor_name,
)
from aisys.serving.session_store import UserSession

pytestmark = pytest.mark.ray


def test_two_replicas_share_one_session_store(ray_session, small_config):
    cfg = small_config
    cfg.online.max_history = 3
    # Two independent lookups by name, as two replicas in two processes would make.
    first = ActorSessionStore(get_or_create_session_actor(cfg))
    second = ActorSessionStore(get_or_create_session_actor(cfg))
    try:
        async def scenario():
            snapshot = {"old": UserSession(items=("a", "b"), last_event_id="s1", purchased=frozenset({"a"}))}
            seeded = await asyncio.gather(first.bulk_load(snapshot, "snap-1"), second.bulk_load(snapshot, "snap-1"))
            assert sorted(seeded) == [0, 1]  # two replicas race to seed: exactly one does
            assert await second.has_snapshot("snap-1") and not await second.has_snapshot("snap-2")

            await first.record("old", "e1", "c", "purchase")
            seen_by_other = await second.get("old")  # the very next read, through the other handle
            assert seen_by_other == UserSession(items=("a", "b", "c"), last_event_id="e1", purchased=frozenset({"a", "c"}))

            # Concurrent purchases from both handles: none lost (the purchased set is unbounded),
            # the history stays bounded, and its newest item is the last event's.
            await asyncio.gather(*(
                (first if n % 2 else second).record("busy", f"b{n}", f"i{n}", "purchase") for n in range(20)
            ))
            busy, nobody = await first.get_many(["busy", "nobody"])
            assert busy.purchased == {f"i{n}" for n in range(20)}
            assert len(busy.items) == 3 and busy.items[-1] == "i" + busy.last_event_id[1:]
            assert nobody == UserSession()

        asyncio.run(scenario())
    finally:
        assert drop_session_actor(cfg) is True
    assert drop_session_actor(cfg) is False  # gone
    assert session_actor_name(cfg).startswith("aisys-sessions-")
