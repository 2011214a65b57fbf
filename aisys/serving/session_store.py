"""Online per-user sessions: the serving side of the sequence feature.

A :class:`UserSession` is what serving knows about a user right now: their
recent items (external item ids, oldest first), the id of their last event
(part of the response-cache key, so a new event invalidates cached answers)
and the items they purchased (never recommended again).

Sessions hold **item ids, not model indices**: replicas may serve different
model versions (a swap in progress, a canary) whose vocabularies differ, so the
store keeps what happened and each model maps ids to its own indices when it
builds its input window (:meth:`aisys.serving.recommender.Recommender.model_input`,
which calls :func:`aisys.features.sequences.recent_window`, the code training uses).

:class:`SessionStore` is a small async interface (four methods), so a Ray actor
(:mod:`aisys.serving.session_actor`) or Redis can implement it. The bookkeeping
itself is the pure, synchronous :class:`SessionTable`; :class:`InMemorySessionStore`
(tests, a single process) and the Ray actor both wrap one.

Recording is idempotent per ``event_id``: an event whose id is among the
user's last :data:`RECENT_EVENT_IDS` recorded ids (or is the id the session was
seeded with) leaves the session as it is. An edge load balancer may replay a
``POST /events`` whose first attempt reached a replica that then died (HAProxy
``retry-on empty-response``, see docs/serving.md); the replay must not append
the item twice. The collector's JSONL file may then hold the event twice:
ingestion keeps one row per ``event_id``
(:func:`aisys.data.validate.dedupe_events`), so the lake does not.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import pyarrow as pa

from aisys.features.sequences import user_histories

PURCHASE_EVENT = "purchase"
DEFAULT_MAX_ITEMS = 200
# Users kept (cfg.online.max_sessions): anyone can create a user id by posting an event, so the
# table must not grow with them; the least recently used user goes first.
DEFAULT_MAX_USERS = 200_000
# Event ids remembered per user for replay detection. A replay comes within
# seconds of the original (a load balancer's retry, a client's retry), long
# before a user posts this many newer events; a small bound keeps the memory
# per live user small (only users with live events get an entry).
RECENT_EVENT_IDS = 16


@dataclass(frozen=True)
class UserSession:
    """One user's online state: recent item ids (oldest first), last event id, purchased item ids, and the time
    of the newest event (seconds since the epoch; ``None`` when unknown): the request-time gap a context-aware
    model needs (:func:`aisys.features.context.seconds_since_last_event`)."""

    items: tuple[str, ...] = ()
    last_event_id: str | None = None
    purchased: frozenset[str] = field(default_factory=frozenset)
    last_event_time: float | None = None


EMPTY_SESSION = UserSession()


class SessionTable:
    """The store's bookkeeping, pure and synchronous (not thread-safe: wrap it).

    ``max_items`` bounds each user's kept items (the newest are kept). Snapshot
    ids that were bulk-loaded are remembered, so a snapshot seeds the table once.
    ``recent_event_ids`` is how many recorded event ids per user are remembered
    to recognise a replayed event (see the module docstring).

    At most ``max_users`` users are kept: past it, the least recently used
    (read or written) user is evicted, and answered like a new user until a
    new event arrives. Each user's entry is bounded too (``max_items`` items,
    ``recent_event_ids`` ids), so the table's memory is bounded by the cap.
    """

    def __init__(
        self,
        max_items: int = DEFAULT_MAX_ITEMS,
        recent_event_ids: int = RECENT_EVENT_IDS,
        max_users: int = DEFAULT_MAX_USERS,
    ) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        if recent_event_ids < 1:
            raise ValueError(f"recent_event_ids must be >= 1, got {recent_event_ids}")
        if max_users < 1:
            raise ValueError(f"max_users must be >= 1, got {max_users}")
        self.max_items = max_items
        self.recent_event_ids = recent_event_ids
        self.max_users = max_users
        self.evicted = 0  # users dropped to stay within max_users
        self._sessions: OrderedDict[str, UserSession] = OrderedDict()
        self._recent: dict[str, tuple[str, ...]] = {}  # user -> last recorded event ids, oldest first
        self._snapshots: set[str] = set()
        self.replays = 0  # events recognised as replays and not applied again

    def get_many(self, user_ids: Sequence[str]) -> list[UserSession]:
        """Each user's session; :data:`EMPTY_SESSION` for a user never seen (a read creates nothing)."""
        found = []
        for user in user_ids:
            session = self._sessions.get(user)
            if session is None:
                found.append(EMPTY_SESSION)
            else:
                self._sessions.move_to_end(user)  # recently used: evicted last
                found.append(session)
        return found

    def most_recent(self, limit: int) -> list[tuple[str, UserSession]]:
        """The ``limit`` most recently used users and their sessions, newest first (their order is unchanged)."""
        return list(itertools.islice(reversed(self._sessions.items()), max(0, limit)))

    def _put(self, user_id: str, session: UserSession) -> None:
        """Store ``session`` as the most recently used, evicting the least recently used beyond the cap."""
        self._sessions[user_id] = session
        self._sessions.move_to_end(user_id)
        while len(self._sessions) > self.max_users:
            gone, _ = self._sessions.popitem(last=False)
            self._recent.pop(gone, None)
            self.evicted += 1

    def record(
        self, user_id: str, event_id: str, item_id: str, event_type: str, event_time: float | None = None
    ) -> UserSession:
        """Apply one event: append the item (every event type enters the sequence, as in training).

        A replay (``event_id`` seen recently for this user) changes nothing and
        returns the session as it is. ``event_time`` (seconds since the epoch) becomes the session's
        ``last_event_time`` unless the session already holds a later one (events may arrive out of order).
        """
        return self.apply(user_id, event_id, item_id, event_type, event_time)[0]

    def apply(
        self, user_id: str, event_id: str, item_id: str, event_type: str, event_time: float | None = None
    ) -> tuple[UserSession, bool]:
        """:meth:`record`, also saying whether the event was applied (False: a replay, nothing changed)."""
        old = self._sessions.get(user_id, EMPTY_SESSION)
        if self.is_replay(user_id, event_id):
            self.replays += 1
            return old, False
        purchased = old.purchased | {item_id} if event_type == PURCHASE_EVENT else old.purchased
        latest = old.last_event_time
        if event_time is not None and (latest is None or event_time > latest):
            latest = float(event_time)
        new = UserSession(
            items=(old.items + (item_id,))[-self.max_items :], last_event_id=event_id, purchased=purchased,
            last_event_time=latest,
        )
        self._recent[user_id] = (self._recent.get(user_id, ()) + (event_id,))[-self.recent_event_ids :]
        self._put(user_id, new)
        return new, True

    def is_replay(self, user_id: str, event_id: str) -> bool:
        """Whether ``event_id`` was already applied to ``user_id``'s session (recently, or as its seed)."""
        session = self._sessions.get(user_id)
        if session is not None and session.last_event_id == event_id:
            return True
        return event_id in self._recent.get(user_id, ())

    def bulk_load(self, sessions: Mapping[str, UserSession], snapshot_id: str) -> int:
        """Seed users from a snapshot, once per ``snapshot_id``; return how many users were seeded.

        Users already in the table keep their state: the table has been
        following them live since it first saw them, so it is at least as new
        as any snapshot (a later snapshot holds the same events, ingested).
        """
        if snapshot_id in self._snapshots:
            return 0
        self._snapshots.add(snapshot_id)
        seeded = 0
        for user, session in sessions.items():
            if user not in self._sessions:
                self._put(str(user), UserSession(
                    items=tuple(session.items)[-self.max_items :],
                    last_event_id=session.last_event_id,
                    purchased=frozenset(session.purchased),
                    last_event_time=session.last_event_time,
                ))
                seeded += 1
        return seeded

    def has_snapshot(self, snapshot_id: str) -> bool:
        """Whether ``snapshot_id`` was bulk-loaded already."""
        return snapshot_id in self._snapshots

    def __len__(self) -> int:
        return len(self._sessions)


class SessionStore(ABC):
    """Where serving keeps each user's session; shared by every replica in production."""

    @abstractmethod
    async def get_many(self, user_ids: Sequence[str]) -> list[UserSession]:
        """Sessions of the given users, in order; an empty session for users never seen."""

    @abstractmethod
    async def apply(
        self, user_id: str, event_id: str, item_id: str, event_type: str, event_time: float | None = None
    ) -> tuple[UserSession, bool]:
        """Apply one event to the user's session: the new session, and False when the event was a replay
        (its ``event_id`` already applied: nothing changed, so nothing downstream should count it again).
        ``event_time``: the event's time in seconds since the epoch (see :meth:`SessionTable.record`)."""

    async def record(
        self, user_id: str, event_id: str, item_id: str, event_type: str, event_time: float | None = None
    ) -> UserSession:
        """Apply one event to the user's session and return the new session."""
        return (await self.apply(user_id, event_id, item_id, event_type, event_time))[0]

    @abstractmethod
    async def bulk_load(self, sessions: Mapping[str, UserSession], snapshot_id: str) -> int:
        """Seed sessions from a lake snapshot, once per snapshot id; return the users seeded."""

    @abstractmethod
    async def has_snapshot(self, snapshot_id: str) -> bool:
        """Whether the snapshot was loaded (lets a replica skip reading the lake)."""

    async def get(self, user_id: str) -> UserSession:
        """One user's session."""
        return (await self.get_many([user_id]))[0]


class InMemorySessionStore(SessionStore):
    """A :class:`SessionTable` in this process: one replica's view, lost on restart.

    No lock is needed: every method runs to completion on the event loop
    without awaiting, so calls never interleave.
    """

    def __init__(self, max_items: int = DEFAULT_MAX_ITEMS, max_users: int = DEFAULT_MAX_USERS) -> None:
        self.table = SessionTable(max_items, max_users=max_users)

    async def get_many(self, user_ids: Sequence[str]) -> list[UserSession]:
        return self.table.get_many(user_ids)

    async def apply(
        self, user_id: str, event_id: str, item_id: str, event_type: str, event_time: float | None = None
    ) -> tuple[UserSession, bool]:
        return self.table.apply(user_id, event_id, item_id, event_type, event_time)

    async def bulk_load(self, sessions: Mapping[str, UserSession], snapshot_id: str) -> int:
        return self.table.bulk_load(sessions, snapshot_id)

    async def has_snapshot(self, snapshot_id: str) -> bool:
        return self.table.has_snapshot(snapshot_id)


def _epoch_seconds(value) -> float | None:
    """A lake timestamp (a ``datetime`` from ``to_pylist``, or an int in the schema's unit) in epoch seconds."""
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        if value.tzinfo is None:
            from datetime import timezone

            value = value.replace(tzinfo=timezone.utc)  # lake timestamps are UTC
        return float(value.timestamp())
    from aisys.schemas import TIMESTAMP_TYPE

    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[TIMESTAMP_TYPE.unit]
    return float(value) / per_second


def sessions_from_events(events: pa.Table, item_index: Mapping[str, int]) -> dict[str, UserSession]:
    """Per-user sessions from a lake snapshot, as training sees it.

    The item order is :func:`aisys.features.sequences.user_histories` over
    ``item_index`` (the bundle's vocabulary), mapped back to ids, so the window
    serving builds from a seeded session equals the training window. The last
    event id and purchased items are taken over all of the user's events.
    """
    histories = user_histories(events, dict(item_index))
    id_of = {index: item for item, index in item_index.items()}
    users = events.column("user_id").to_pylist() if events.num_rows else []
    items = events.column("item_id").to_pylist() if events.num_rows else []
    types = events.column("event_type").to_pylist() if "event_type" in events.column_names else [None] * len(users)
    event_ids = events.column("event_id").to_pylist() if "event_id" in events.column_names else [None] * len(users)
    times = events.column("timestamp").to_pylist() if events.num_rows else []

    purchased: dict[str, set[str]] = {}
    last: dict[str, tuple] = {}
    for row, (user, item, event_type, event_id, ts) in enumerate(zip(users, items, types, event_ids, times)):
        if event_type == PURCHASE_EVENT:
            purchased.setdefault(user, set()).add(item)
        key = (ts, row)  # the newest event; row order breaks timestamp ties, as in user_histories
        if user not in last or key >= last[user][0]:
            last[user] = (key, event_id)

    return {
        user: UserSession(
            items=tuple(id_of[i] for i in histories.get(user, [])),
            last_event_id=last[user][1],
            purchased=frozenset(purchased.get(user, ())),
            last_event_time=_epoch_seconds(last[user][0][0]),
        )
        for user in last
    }
