"""A TTL cache of recommendation responses, invalidated by construction.

The key is ``(user_id, k, model_version, arm, last_event_id, context)``: when the user
posts an event, their ``last_event_id`` changes, so the next request asks for
a key that was never stored and is computed afresh. Nothing has to find and
delete stale entries (which would need a broadcast to every replica); old
entries simply age out after ``ttl_s`` or are evicted least-recently-used
beyond ``max_entries``. A model swap changes ``model_version`` the same way, and
time passing moves a context-aware model's ``context`` (the gap bucket) the same way.

Backed by :class:`cachetools.TTLCache` (already pinned in requirements.lock
through MLflow), with a lock because Serve runs handlers on several threads.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from cachetools import TTLCache

if TYPE_CHECKING:
    from aisys.config import AppConfig


class CacheKey(NamedTuple):
    """What a cached recommendation response depends on."""

    user_id: str
    k: int
    model_version: str | None
    arm: str
    last_event_id: str | None
    # The request context the model's answer depends on (its gap bucket: ``Recommender.context_key``), so a list
    # computed right after the user's last event is not served to them a day later from the cache.
    context: Any = None


class ResponseCache:
    """Responses by :class:`CacheKey`, kept ``ttl_s`` seconds, at most ``max_entries``.

    ``hits``/``misses`` count lookups; ``on_hit``/``on_miss`` (if set) are
    called with the key on each, for metrics.
    """

    def __init__(self, ttl_s: float, max_entries: int, timer: Callable[[], float] = time.monotonic) -> None:
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0 (use no cache to disable caching), got {ttl_s}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.ttl_s = float(ttl_s)
        self.max_entries = int(max_entries)
        self.hits = 0
        self.misses = 0
        self.on_hit: Callable[[CacheKey], None] | None = None
        self.on_miss: Callable[[CacheKey], None] | None = None
        self._lock = threading.Lock()
        self._entries: TTLCache = TTLCache(maxsize=self.max_entries, ttl=self.ttl_s, timer=timer)

    @classmethod
    def from_config(cls, cfg: "AppConfig") -> "ResponseCache | None":
        """The cache ``cfg.gateway`` describes, or None when ``cache_ttl_s`` is 0."""
        g = cfg.gateway
        return cls(g.cache_ttl_s, g.cache_max_entries) if g.cache_ttl_s > 0 else None

    def get(self, key: CacheKey) -> Any | None:
        """The cached value for ``key``, or None (a miss) when absent or expired."""
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
        callback = self.on_miss if value is None else self.on_hit
        if callback is not None:
            callback(key)
        return value

    def put(self, key: CacheKey, value: Any) -> None:
        """Store ``value`` (not None) under ``key`` for ``ttl_s`` seconds."""
        if value is None:
            raise ValueError("cannot cache None: it means 'miss' to get()")
        with self._lock:
            self._entries[key] = value

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            self._entries.expire()
            return len(self._entries)
