"""The session store as one named Ray actor shared by every replica (``cfg.online.session_store="actor"``).

Every replica (and any driver) reaches the same actor by name, so an event
posted to one replica is seen by the next request on any other. The actor is
an async actor whose methods never await, so calls are applied one at a time
in arrival order, and a call costs about a millisecond.

The actor is *detached*: it outlives the replica that happened to create it
(replicas come and go with autoscaling and swaps). It is named after the
workspace, so two deployments with different workspaces on one cluster do not
share sessions; :func:`drop_session_actor` removes it.
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import ray

from aisys.config import AppConfig
from aisys.runtime import kill_named_actor
from aisys.serving.session_cache import VersionedSessionStore
from aisys.serving.session_store import SessionStore, UserSession

NAMESPACE = "aisys"


def session_actor_name(cfg: AppConfig) -> str:
    """``aisys-sessions-<hash of the workspace>``: one store per workspace."""
    digest = hashlib.sha256(cfg.paths.workspace.encode()).hexdigest()[:10]
    return f"aisys-sessions-{digest}"


@ray.remote(num_cpus=0, max_restarts=0)
class SessionStoreActor(VersionedSessionStore):
    """The in-memory store, held by one actor (its methods never await, so calls apply in arrival order).

    Its change log (:class:`~aisys.serving.session_cache.VersionedSessionStore`) keeps the replicas' local
    copies fresh (:class:`~aisys.serving.session_cache.ReplicaSessionCache`).
    """

    async def size(self) -> int:
        return len(self.table)

    async def stats(self) -> dict:
        """Users held, the cap, and users evicted to stay within it (a flood shows here)."""
        table = self.table
        return {"users": len(table), "max_users": table.max_users, "evicted": table.evicted}

    async def replays(self) -> int:
        """Events recognised as replays (same ``event_id``) and not applied again, since the actor started."""
        return self.table.replays


class ActorSessionStore(SessionStore):
    """:class:`SessionStore` over a :class:`SessionStoreActor` handle (awaits its object refs)."""

    def __init__(self, handle) -> None:
        self.handle = handle

    async def get_many(self, user_ids: Sequence[str]) -> list[UserSession]:
        return await self.handle.get_many.remote(list(user_ids))

    async def apply(
        self, user_id: str, event_id: str, item_id: str, event_type: str, event_time: float | None = None
    ) -> tuple[UserSession, bool]:
        return await self.handle.apply.remote(user_id, event_id, item_id, event_type, event_time)

    async def bulk_load(self, sessions: Mapping[str, UserSession], snapshot_id: str) -> int:
        return await self.handle.bulk_load.remote(dict(sessions), snapshot_id)

    async def has_snapshot(self, snapshot_id: str) -> bool:
        return await self.handle.has_snapshot.remote(snapshot_id)

    # Versioned calls, for a replica's local copy (aisys.serving.session_cache.ReplicaSessionCache).

    async def get_many_versioned(self, user_ids: Sequence[str]) -> list[tuple[UserSession, int]]:
        return await self.handle.get_many_versioned.remote(list(user_ids))

    async def apply_versioned(
        self, user_id: str, event_id: str, item_id: str, event_type: str, event_time: float | None = None
    ) -> tuple[UserSession, bool, int]:
        return await self.handle.apply_versioned.remote(user_id, event_id, item_id, event_type, event_time)

    async def changes_since(self, cursor: tuple[str, int] | None, wait_s: float = 0.0):
        return await self.handle.changes_since.remote(cursor, wait_s)

    async def recent_sessions(self, limit: int):
        return await self.handle.recent_sessions.remote(limit)


def get_or_create_session_actor(cfg: AppConfig, max_items: int | None = None):
    """The workspace's session actor, created on first use (race-free: ``get_if_exists``).

    Its limits (``online.max_history`` items per user, ``online.max_sessions`` users) are fixed when it is
    created: an actor that outlived a config change keeps the old ones until :func:`drop_session_actor`.
    """
    from aisys.serving.placement import head_node_resources

    return SessionStoreActor.options(
        name=session_actor_name(cfg), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        resources=head_node_resources(),  # on the head: a worker node's loss must not take the sessions
    ).remote(max_items or cfg.online.max_history, cfg.online.max_sessions)


def actor_session_store(cfg: AppConfig) -> SessionStore:
    """A :class:`SessionStore` backed by the workspace's shared actor (Ray must be up).

    With ``online.session_sync_every_s > 0`` (the default) reads come from a replica-local copy kept fresh by
    a short sync (:class:`~aisys.serving.session_cache.ReplicaSessionCache`; staleness bounded by that period).
    """
    shared = ActorSessionStore(get_or_create_session_actor(cfg))
    if cfg.online.session_sync_every_s <= 0:
        return shared
    from aisys.serving.session_cache import ReplicaSessionCache

    return ReplicaSessionCache(shared, cfg.online.session_sync_every_s, cfg.online.max_sessions,
                               sync_wait_s=cfg.online.session_sync_wait_s, warm_users=cfg.online.session_warm_users)


def drop_session_actor(cfg: AppConfig) -> bool:
    """Kill the workspace's session actor; ``False`` when there was none."""
    return kill_named_actor(session_actor_name(cfg), NAMESPACE)
