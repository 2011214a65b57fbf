"""Tokens a replica holds, per key, leased in blocks from the shared rate limiter (pure bookkeeping, no Ray).

Asking the shared limiter actor for every request put an actor round trip on every request's path. Instead a
replica leases a *block* of tokens from the shared bucket (the actor takes them from the key's one bucket, so
the limit stays shared by all replicas) and spends them locally, asking again, in the background, when half
the block is gone. Two rules keep the shared limit honest:

- a block is small next to the bucket (``burst // BLOCK_FRACTION``, at most ``max_block``), so the replicas
  together can strand at most a few blocks' worth of a key's burst while another replica is refused;
- a lease expires ``ttl_s`` after it was granted: tokens not spent by then are dropped, never returned, so a
  lease can only make the limit stricter, never looser (no tokens saved up to spend in a burst later).

With a block of 1 (a burst under ``BLOCK_FRACTION``) every request asks the actor, exactly as before. A
refusal is remembered until the time the actor said the next token would be there (its ``retry_after_s``):
until then the bucket is empty for everyone (expired leases are never returned to it), so a client far over
its limit is refused locally instead of costing an actor call per request.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from aisys.gateway.ratelimit import Decision

BLOCK_FRACTION = 8  # a block is at most 1/8 of the key's burst


@dataclass
class Lease:
    """Unspent leased tokens of one key, and the shared bucket's state when they were granted."""

    tokens: int
    expires_at: float
    limit: int
    shared_remaining: int
    reset_s: float
    refilling: bool = False


class LeaseBook:
    """Leases per key: :meth:`take` spends one token locally; :meth:`add` records what the actor granted."""

    def __init__(self, max_block: int = 64, ttl_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        if max_block < 1 or ttl_s <= 0 or max_keys < 1:
            raise ValueError(f"need max_block >= 1, ttl_s > 0, max_keys >= 1; got {max_block}, {ttl_s}, {max_keys}")
        self.max_block = max_block
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._leases: collections.OrderedDict[str, Lease] = collections.OrderedDict()
        self._refusals: collections.OrderedDict[str, tuple[float, "Decision"]] = collections.OrderedDict()

    def block_size(self, burst: int) -> int:
        """Tokens to lease at once for a key whose bucket holds ``burst``."""
        return max(1, min(self.max_block, int(burst) // BLOCK_FRACTION))

    def take(self, key_id: str) -> "Decision | None":
        """One locally held token of ``key_id`` as an allowed decision, or None (no live lease with a token)."""
        from aisys.gateway.ratelimit import Decision

        with self._lock:
            lease = self._leases.get(key_id)
            if lease is None or lease.tokens < 1:
                return None
            if self._clock() >= lease.expires_at:
                del self._leases[key_id]  # unspent tokens are dropped: stricter, never looser
                return None
            lease.tokens -= 1
            self._leases.move_to_end(key_id)
            return Decision(allowed=True, remaining=lease.shared_remaining + lease.tokens, limit=lease.limit,
                            reset_s=lease.reset_s, retry_after_s=0.0)

    def note_refusal(self, key_id: str, refusal: "Decision") -> None:
        """The actor refused ``key_id``: refuse it here until its next token is due."""
        with self._lock:
            self._refusals[key_id] = (self._clock() + refusal.retry_after_s, refusal)
            self._refusals.move_to_end(key_id)
            while len(self._refusals) > self.max_keys:
                self._refusals.popitem(last=False)

    def refusal(self, key_id: str) -> "Decision | None":
        """The remembered refusal of ``key_id`` with its waits brought up to date, or None once a token is due."""
        import dataclasses

        with self._lock:
            held = self._refusals.get(key_id)
            if held is None:
                return None
            due, refusal = held
            now = self._clock()
            if now >= due:
                del self._refusals[key_id]
                return None
            waited = refusal.retry_after_s - (due - now)
            return dataclasses.replace(refusal, retry_after_s=due - now, reset_s=max(0.0, refusal.reset_s - waited))

    def claim_refill(self, key_id: str, burst: int) -> bool:
        """Whether to lease ``key_id``'s next block now (half the block is spent); claims it (one at a time)."""
        with self._lock:
            lease = self._leases.get(key_id)
            block = self.block_size(burst)
            if lease is None or lease.refilling or block <= 1 or lease.tokens * 2 > block:
                return False
            lease.refilling = True
            return True

    def add(self, key_id: str, granted: int, shared: "Decision") -> None:
        """Record ``granted`` tokens leased for ``key_id``; ``shared`` is the actor's decision after the grant."""
        with self._lock:
            now = self._clock()
            lease = self._leases.get(key_id)
            live = lease is not None and now < lease.expires_at
            tokens = (lease.tokens if live else 0) + max(0, int(granted))
            self._leases[key_id] = Lease(tokens=tokens, expires_at=now + self.ttl_s, limit=shared.limit,
                                         shared_remaining=shared.remaining, reset_s=shared.reset_s)
            self._leases.move_to_end(key_id)
            while len(self._leases) > self.max_keys:
                self._leases.popitem(last=False)  # least recently used: at worst, one more actor call

    def refill_failed(self, key_id: str) -> None:
        """A background lease did not come back: allow the next one."""
        with self._lock:
            if (lease := self._leases.get(key_id)) is not None:
                lease.refilling = False

    def held(self, key_id: str) -> int:
        """Unspent tokens of ``key_id`` (expired ones count as none)."""
        with self._lock:
            lease = self._leases.get(key_id)
            return lease.tokens if lease is not None and self._clock() < lease.expires_at else 0

    def __len__(self) -> int:
        return len(self._leases)
