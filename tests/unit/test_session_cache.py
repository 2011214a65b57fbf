"""A replica's local copy of the shared sessions: reads without a round trip, writes seen at once on the same
replica and within one sync on another; a snapshot load or a new actor resets every copy."""

from __future__ import annotations

import asyncio

from aisys.serving.session_cache import ReplicaSessionCache, VersionedSessionStore
from aisys.serving.session_store import EMPTY_SESSION, UserSession


class CountingShared(VersionedSessionStore):
    """The shared actor's body, counting the calls a replica makes to it."""

    def __init__(self) -> None:
        super().__init__(max_items=50)
        self.reads = 0

    async def get_many_versioned(self, user_ids):
        self.reads += 1
        return await super().get_many_versioned(user_ids)


def run(coro):
    return asyncio.run(coro)


def test_reads_come_from_the_copy_and_writes_show_at_once_here_and_after_a_sync_elsewhere():
    async def scenario():
        shared = CountingShared()
        await shared.bulk_load({"u1": UserSession(items=("a",))}, "snap-1")
        replica_a, replica_b = (ReplicaSessionCache(shared, sync_every_s=3600) for _ in range(2))
        assert (await replica_b.get("u1")).items == ("a",)
        for _ in range(5):
            await replica_b.get("u1")
        assert shared.reads == 1 and replica_b.hits == 5  # one fetch, then the copy

        session, applied = await replica_a.apply("u1", "e1", "b", "view", 10.0)
        assert applied and session.items == ("a", "b")
        assert (await replica_a.get("u1")).items == ("a", "b")  # read-your-writes on the same replica
        assert (await replica_b.get("u1")).items == ("a",)  # replica B: stale until its next sync ...
        assert await replica_b.sync() == 1
        assert (await replica_b.get("u1")).items == ("a", "b")  # ... and fresh after it
        _, replayed = await replica_b.apply("u1", "e1", "b", "view", 10.0)
        assert not replayed  # the shared store still decides replays
        assert await replica_b.sync() == 0  # nothing changed since
        replica_a.stop(), replica_b.stop()

    run(scenario())


def test_the_background_sync_bounds_staleness():
    async def scenario():
        shared = CountingShared()
        replica_a, replica_b = ReplicaSessionCache(shared, 0.01), ReplicaSessionCache(shared, 0.01)
        assert await replica_b.get("new") == EMPTY_SESSION  # unknown users are held too: no fetch per request
        await replica_a.apply("new", "e1", "x", "view")
        for _ in range(200):  # a few sync periods at most; the loop only bounds a broken sync
            if (await replica_b.get("new")).items == ("x",):
                break
            await asyncio.sleep(0.01)
        assert (await replica_b.get("new")).items == ("x",) and replica_b.syncs >= 1
        replica_a.stop(), replica_b.stop()

    run(scenario())


def test_a_snapshot_load_or_a_new_actor_resets_every_copy():
    async def scenario():
        shared = CountingShared()
        replica = ReplicaSessionCache(shared, sync_every_s=3600)
        await replica.sync()
        assert await replica.get("seeded") == EMPTY_SESSION
        await shared.bulk_load({"seeded": UserSession(items=("s",))}, "snap-2")  # another replica seeds it
        await replica.sync()
        assert replica.resets >= 1 and (await replica.get("seeded")).items == ("s",)

        replica.shared = CountingShared()  # the actor was re-created (a new epoch): start over
        await replica.sync()
        assert await replica.get("seeded") == EMPTY_SESSION
        replica.stop()

    run(scenario())


def test_a_late_older_answer_never_overwrites_a_newer_one():
    replica = ReplicaSessionCache(VersionedSessionStore(), sync_every_s=3600)
    replica._put("u", UserSession(items=("new",)), 5)
    replica._put("u", UserSession(items=("old",)), 4)
    assert replica._copy["u"][0].items == ("new",)


def test_a_long_poll_sync_answers_at_once_on_a_change_and_waits_while_idle():
    async def scenario():
        shared = CountingShared()
        writer, reader = ReplicaSessionCache(shared, 3600), ReplicaSessionCache(shared, 3600)
        assert await reader.get("u") == EMPTY_SESSION  # takes a cursor; the user is held
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await reader.sync(wait_s=0.05) == 0  # nothing changed: held about wait_s, then an empty answer
        assert loop.time() - started >= 0.04
        polling = asyncio.ensure_future(reader.sync(wait_s=30))
        await asyncio.sleep(0.01)
        assert not polling.done()  # held while the store is idle
        await writer.apply("u", "e1", "x", "view")
        assert await asyncio.wait_for(polling, 5) == 1  # ... and answered as soon as an event is applied
        assert (await reader.get("u")).items == ("x",)
        await writer.apply("u", "e2", "y", "view")
        assert await asyncio.wait_for(reader.sync(wait_s=30), 5) == 1  # a change already there: no wait
        writer.stop(), reader.stop()

    run(scenario())


def test_the_background_long_poll_sync_bounds_staleness_with_few_calls_while_idle():
    async def scenario():
        shared = CountingShared()
        replica_a = ReplicaSessionCache(shared, 0.01, sync_wait_s=5)
        replica_b = ReplicaSessionCache(shared, 0.01, sync_wait_s=5)
        await replica_b.get("new")
        await asyncio.sleep(0.2)
        assert replica_b.syncs <= 3  # idle: the calls wait in the store instead of one per 0.01 s
        await replica_a.apply("new", "e1", "x", "view")
        for _ in range(200):
            if (await replica_b.get("new")).items == ("x",):
                break
            await asyncio.sleep(0.01)
        assert (await replica_b.get("new")).items == ("x",)
        replica_a.stop(), replica_b.stop()

    run(scenario())


def test_a_warm_copy_starts_with_the_most_recent_users_and_misses_no_change():
    async def scenario():
        shared = CountingShared()
        await shared.bulk_load({f"u{n}": UserSession(items=(f"i{n}",)) for n in range(5)}, "snap-1")
        await shared.get_many_versioned(["u0"])  # u0 used last: the most recent
        shared.reads = 0
        replica = ReplicaSessionCache(shared, sync_every_s=3600, warm_users=3)
        await replica.prime()
        assert replica.warmed == 3 and set(replica._copy) == {"u0", "u3", "u4"}
        assert (await replica.get("u0")).items == ("i0",) and shared.reads == 0  # held: no call
        assert (await replica.get("u1")).items == ("i1",) and shared.reads == 1  # not warmed: fetched once
        await shared.apply_versioned("u4", "e1", "x", "view")  # changed after the warm start ...
        assert await replica.sync() == 1 and (await replica.get("u4")).items == ("i4", "x")  # ... reaches the copy

        await shared.bulk_load({"s": UserSession(items=("s1",))}, "snap-2")  # a new snapshot: start over, warm
        await replica.sync()
        assert replica.resets == 2 and replica.warmed == 6 and "s" in replica._copy
        assert replica.stats()["warmed"] == 6
        replica.stop()

    run(scenario())


def test_no_warm_users_keeps_the_copy_empty_until_read():
    async def scenario():
        shared = CountingShared()
        await shared.bulk_load({"u": UserSession(items=("a",))}, "snap-1")
        replica = ReplicaSessionCache(shared, sync_every_s=3600)
        await replica.prime()
        assert replica.warmed == 0 and not replica._copy
        replica.stop()

    run(scenario())


def test_reads_racing_the_first_sync_share_one_warm_start():
    async def scenario():
        shared = CountingShared()
        await shared.bulk_load({f"u{n}": UserSession(items=(f"i{n}",)) for n in range(3)}, "snap-1")
        calls = 0
        recent = shared.recent_sessions

        async def counted(limit):
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.01)  # an actor call in flight while the other reads arrive
            return await recent(limit)

        shared.recent_sessions = counted
        replica = ReplicaSessionCache(shared, sync_every_s=3600, warm_users=10)
        sessions = await asyncio.gather(*(replica.get(f"u{n % 3}") for n in range(6)))
        assert [s.items for s in sessions] == [(f"i{n % 3}",) for n in range(6)]
        assert calls == 1 and replica.warmed == 3 and shared.reads == 0
        replica.stop()

    run(scenario())
