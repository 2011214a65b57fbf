"""A replica-local copy of the shared session store: reads without a round trip, staleness bounded.

Asking the shared session actor on every ``GET /recommendations`` put an actor round trip on each request.
:class:`ReplicaSessionCache` wraps the shared store (:class:`~aisys.serving.session_actor.ActorSessionStore`):

- **reads** are served from this replica's copy; a user the copy does not hold yet is fetched from the shared
  store once (concurrent misses share one call);
- **writes** (``POST /events``) go to the shared store first (it decides replays, by ``event_id``) and the
  answer updates the copy at once, so a replica reads its own writes;
- **a short sync** asks the shared store every ``sync_every_s`` for the sessions changed since the last sync
  (``changes_since``, a change cursor kept by the actor) and applies them. With ``sync_wait_s`` the call is a
  long poll: the actor holds it while nothing changed and answers as soon as something does, so an idle store
  costs each replica about one call per ``sync_wait_s`` (issue 15: the syncs were a per-second cost of every
  replica and of the actor that uvicorn does not pay).

The guarantee, explicitly: an event applied through replica A is seen by a request on replica B at most
``sync_every_s`` plus one actor call later (default 0.1 s), and at once on replica A. A snapshot bulk-load
(a new model's seed) clears every copy. Each entry carries the actor's change number, so an older answer that
arrives late never overwrites a newer one. ``online.session_sync_every_s: 0`` turns the copy off (every read
asks the shared store, no staleness at all).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from typing import Any, Mapping, Sequence

from aisys.serving.session_store import InMemorySessionStore, SessionStore, UserSession

logger = logging.getLogger(__name__)

MAX_CHANGE_LOG = 100_000  # users remembered as changed; a replica further behind reloads its copy


class VersionedSessionStore(InMemorySessionStore):
    """The in-memory store with a change log: what the shared session actor holds (pure, no Ray).

    Every applied event bumps a change number ``seq`` and marks its user; :meth:`changes_since` answers the users
    changed after a replica's cursor. Versioned answers carry ``seq``: the state they hold is the state as of
    ``seq``. Its methods never await, so in an actor each call runs whole, in arrival order.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._epoch = uuid.uuid4().hex  # a re-created actor is a new epoch: every copy starts over
        self._seq = 0
        self._floor = 0  # cursors before this must reload (a bulk load, or a change-log entry dropped)
        self._changed: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._changed_event: asyncio.Event | None = None  # set (and dropped) on the next change: long-poll syncs

    def _notify(self) -> None:
        """Wake the syncs waiting in :meth:`changes_since` (the store changed)."""
        if self._changed_event is not None:
            self._changed_event.set()
            self._changed_event = None

    def _mark(self, user_id: str) -> None:
        self._notify()
        self._seq += 1
        self._changed[user_id] = self._seq
        self._changed.move_to_end(user_id)
        while len(self._changed) > MAX_CHANGE_LOG:
            _, seq = self._changed.popitem(last=False)
            self._floor = max(self._floor, seq)

    async def apply(self, user_id: str, event_id: str, item_id: str, event_type: str,
                    event_time: float | None = None) -> tuple[UserSession, bool]:
        session, applied = self.table.apply(user_id, event_id, item_id, event_type, event_time)
        if applied:
            self._mark(user_id)
        return session, applied

    async def apply_versioned(self, user_id: str, event_id: str, item_id: str, event_type: str,
                              event_time: float | None = None) -> tuple[UserSession, bool, int]:
        session, applied = await self.apply(user_id, event_id, item_id, event_type, event_time)
        return session, applied, self._seq

    async def get_many_versioned(self, user_ids: Sequence[str]) -> list[tuple[UserSession, int]]:
        return [(session, self._seq) for session in self.table.get_many(user_ids)]

    async def bulk_load(self, sessions: Mapping[str, UserSession], snapshot_id: str) -> int:
        seeded = self.table.bulk_load(sessions, snapshot_id)
        if seeded:
            self._notify()
            self._seq += 1
            self._floor = self._seq  # every copy may hold a seeded user as unknown: all start over
        return seeded

    async def recent_sessions(self, limit: int) -> tuple[str, int, dict[str, tuple[UserSession, int]]]:
        """``(epoch, seq, {user: (session, seq)})`` of the ``limit`` most recently used users, in one answer: a
        copy that starts from it and syncs from ``(epoch, seq)`` misses no change (the state and the cursor
        are taken together)."""
        return self._epoch, self._seq, {user: (session, self._seq) for user, session in self.table.most_recent(limit)}

    async def changes_since(self, cursor: tuple[str, int] | None, wait_s: float = 0.0
                            ) -> tuple[str, int, dict[str, tuple[UserSession, int]] | None]:
        """``(epoch, seq, {user: (session, seq)})`` changed after ``cursor``; ``None`` for "reload everything".

        ``wait_s > 0``: when nothing changed after a valid ``cursor``, wait up to that long for a change first (a
        long poll: the answer leaves as soon as an event is applied). The wait is the only await: the answer is
        computed whole after it, so calls still apply in arrival order.
        """
        if wait_s > 0 and cursor is not None and cursor[0] == self._epoch and cursor[1] == self._seq:
            if self._changed_event is None:
                self._changed_event = asyncio.Event()
            try:
                await asyncio.wait_for(self._changed_event.wait(), wait_s)
            except (asyncio.TimeoutError, TimeoutError):
                pass
        if cursor is None or cursor[0] != self._epoch or cursor[1] < self._floor:
            return self._epoch, self._seq, None
        changed = {}
        for user in reversed(self._changed):  # newest first: stop at the cursor
            if self._changed[user] <= cursor[1]:
                break
            changed[user] = (self.table.get_many([user])[0], self._seq)
        return self._epoch, self._seq, changed



class ReplicaSessionCache(SessionStore):
    """:class:`SessionStore` over a shared store, read from a local copy kept fresh by a short sync."""

    def __init__(self, shared: Any, sync_every_s: float = 0.1, max_users: int = 1_000_000,
                 sync_wait_s: float = 0.0, warm_users: int = 0) -> None:
        """``shared`` is a versioned shared store (``get_many_versioned``, ``apply_versioned``, ``changes_since``,
        ``recent_sessions``).

        ``sync_wait_s > 0``: the background sync long-polls (``changes_since(cursor, wait_s)``): the shared store
        holds the call while nothing changed, so an idle store costs one call per ``sync_wait_s``, not one per
        ``sync_every_s``; a change still reaches this copy within ``sync_every_s`` plus one call.
        ``warm_users > 0``: the copy starts (and starts over after a reset) holding the shared store's that many
        most recently used users, taken in one call, so their first request on this replica makes none.
        """
        if sync_every_s <= 0 or max_users < 1 or sync_wait_s < 0 or warm_users < 0:
            raise ValueError(f"need sync_every_s > 0, max_users >= 1, sync_wait_s >= 0 and warm_users >= 0, got "
                             f"{sync_every_s}, {max_users}, {sync_wait_s}, {warm_users}")
        self.shared = shared
        self.sync_every_s = sync_every_s
        self.sync_wait_s = sync_wait_s
        self.max_users = max_users
        self.warm_users = min(warm_users, max_users)
        self._copy: collections.OrderedDict[str, tuple[UserSession, int]] = collections.OrderedDict()
        self._cursor: tuple[str, int] | None = None  # (the actor's epoch, its change number) at the last sync
        self._fetching: dict[str, asyncio.Future] = {}
        self._sync_task: asyncio.Task | None = None
        self._first_sync: asyncio.Future | None = None  # the sync that takes the first cursor (see prime)
        self._generation = 0  # bumped by every reset: a fetch that crossed one does not refill the copy
        self.hits = self.misses = self.syncs = self.sync_errors = self.resets = self.warmed = 0

    # --- the SessionStore interface -------------------------------------------------------------

    async def prime(self) -> None:
        """Take the first cursor (and the warm users) now, e.g. while a replica starts, not on its first read.

        Reads that arrive while it runs wait for the same call (one warm start, not one per read); a failed one
        is tried again by the next read.
        """
        if self._cursor is None:  # take a cursor first, so nothing fetched can miss a change
            if self._first_sync is None or self._first_sync.done():
                self._first_sync = asyncio.ensure_future(self.sync())
            await asyncio.shield(self._first_sync)
        self._start_sync()

    async def get_many(self, user_ids: Sequence[str]) -> list[UserSession]:
        await self.prime()
        missing = [u for u in dict.fromkeys(user_ids) if u not in self._copy]
        self.hits += len(user_ids) - len(missing)
        if missing:
            await self._fetch(missing)
        out = []
        for user in user_ids:
            entry = self._copy.get(user)
            if entry is None:  # evicted, or the copy was reset, while fetching: ask once more, directly
                entry = (await self.shared.get_many_versioned([user]))[0]
            out.append(entry[0])
        return out

    async def apply(self, user_id: str, event_id: str, item_id: str, event_type: str,
                    event_time: float | None = None) -> tuple[UserSession, bool]:
        session, applied, version = await self.shared.apply_versioned(user_id, event_id, item_id, event_type,
                                                                      event_time)
        self._put(user_id, session, version)
        return session, applied

    async def bulk_load(self, sessions: Mapping[str, UserSession], snapshot_id: str) -> int:
        seeded = await self.shared.bulk_load(sessions, snapshot_id)
        if seeded:
            self._reset()
        return seeded

    async def has_snapshot(self, snapshot_id: str) -> bool:
        return await self.shared.has_snapshot(snapshot_id)

    # --- the copy -------------------------------------------------------------------------------

    def _put(self, user_id: str, session: UserSession, version: int) -> None:
        held = self._copy.get(user_id)
        if held is not None and held[1] > version:
            return  # a newer state arrived first (a sync and a write crossed)
        self._copy[user_id] = (session, version)
        self._copy.move_to_end(user_id)
        while len(self._copy) > self.max_users:
            self._copy.popitem(last=False)

    def _reset(self) -> None:
        self.resets += 1
        self._generation += 1
        self._copy.clear()

    async def _fetch(self, users: list[str]) -> None:
        """Fetch ``users`` into the copy; a user another request is fetching already is awaited, not asked again."""
        waiting = [self._fetching[u] for u in users if u in self._fetching]
        asked = [u for u in users if u not in self._fetching]
        if asked:
            self.misses += len(asked)
            future = asyncio.get_running_loop().create_future()
            for user in asked:
                self._fetching[user] = future
            generation = self._generation
            try:
                answers = await self.shared.get_many_versioned(asked)
                if generation == self._generation:
                    for user, entry in zip(asked, answers):
                        self._put(user, *entry)
                future.set_result(None)
            except BaseException as err:
                future.set_exception(err)
                future.exception()  # retrieved: the awaiting requests re-raise it themselves
                raise
            finally:
                for user in asked:
                    self._fetching.pop(user, None)
        for future in waiting:
            await asyncio.shield(future)

    # --- the sync -------------------------------------------------------------------------------

    def _start_sync(self) -> None:
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_forever())

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sync_every_s)
            try:
                await self.sync(self.sync_wait_s)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the shared store is down: keep serving the copy, try again next tick
                self.sync_errors += 1
                if self.sync_errors in (1, 10, 100) or self.sync_errors % 1000 == 0:
                    logger.warning("session sync failed (%d times): %s: %s", self.sync_errors,
                                   type(err).__name__, err)

    async def sync(self, wait_s: float = 0.0) -> int:
        """Apply the sessions changed in the shared store since the last sync; return how many.

        ``wait_s > 0``: the shared store may hold the call that long while nothing changed (a long poll).
        """
        if self._cursor is None and self.warm_users:
            epoch, seq, changed = None, 0, None  # the first sync: start from the warm users at once
        elif wait_s > 0:
            epoch, seq, changed = await self.shared.changes_since(self._cursor, wait_s)
        else:
            epoch, seq, changed = await self.shared.changes_since(self._cursor)
        self.syncs += 1
        if changed is None:  # the first sync, a new actor, or our cursor fell out of its change log: start over
            self._reset()
            if not self.warm_users:
                self._cursor = (epoch, seq)
                return 0
            epoch, seq, changed = await self.shared.recent_sessions(self.warm_users)
            for user, (session, version) in reversed(changed.items()):  # oldest first: the newest end up last
                self._put(user, session, version)
            self.warmed += len(changed)
        else:
            for user, (session, version) in changed.items():
                if user in self._copy:  # users this replica never served need no copy
                    self._put(user, session, version)
        self._cursor = (epoch, seq)
        return len(changed)

    def stop(self) -> None:
        """Stop the background sync (the replica is shutting down; may be called from another thread)."""
        task = self._sync_task
        if task is None or task.done():
            return
        try:
            task.get_loop().call_soon_threadsafe(task.cancel)
        except RuntimeError:  # its loop is closed already: nothing left to cancel
            pass

    def stats(self) -> dict[str, int]:
        """Reads from the copy and from the shared store, syncs, failed syncs, resets, users taken in warm starts,
        users held."""
        return {"hits": self.hits, "misses": self.misses, "syncs": self.syncs, "sync_errors": self.sync_errors,
                "resets": self.resets, "warmed": self.warmed, "users": len(self._copy)}
