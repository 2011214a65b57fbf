"""Per-key token-bucket rate limits, shared by every replica.

- :class:`TokenBucket` is the pure algorithm: ``burst`` tokens, refilled at
  ``rate`` per second, one token per request, clock injectable.
- :class:`RateLimiter` is the interface the gateway calls:
  ``acquire(key_id, rate, burst) -> Decision``.
- :class:`InMemoryRateLimiter` keeps the buckets in this process (tests, a
  single uvicorn process).
- :class:`RayRateLimiter` asks ONE named, detached Ray actor that holds every
  bucket, so a key's limit holds across all Serve replicas instead of being
  multiplied by their number. It leases tokens in blocks and spends them
  locally (:mod:`aisys.gateway.leases`), so the actor round trip is off most
  requests' path: measured in ``benchmarks/serving.py`` (docs/serving.md).

If the actor cannot be reached (dead, or slower than ``timeout_s``; the first
call after the actor is (re)created may take up to ``connect_timeout_s`` while
its process starts, which :meth:`RayRateLimiter.connect` does at server start),
the limiter *fails open* by default, but not unlimited: while the actor is
unreachable each replica limits on its own, with a local per-replica
:class:`InMemoryRateLimiter` (same rate and burst per bucket), so a caller gets
at most N replicas times its limit instead of everything; the failure is
counted and logged (``aisys_rate_limiter_degraded_total`` counts each request
decided that way), and the actor is looked up (or re-created) again after
``retry_every_s``. Tokens already leased are spent first, then the local bucket
decides: a replica never limits less than its own bucket would. Failing closed would turn a limiter outage into a full API
outage. ``fail_open=False`` (``gateway.rate_limit_fail_open: false``) refuses
instead (the gateway answers 503).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable


logger = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class Decision:
    """The answer to one ``acquire``.

    ``remaining`` whole tokens are left; ``reset_s`` is how long until the
    bucket is full again; ``retry_after_s`` how long until one token is there
    (0 when allowed). ``error`` is set when the shared limiter could not be
    asked: then ``fallback`` says whether a local per-replica bucket decided
    (fail open), else the decision is the fail-closed refusal.
    """

    allowed: bool
    remaining: int
    limit: int
    reset_s: float
    retry_after_s: float
    error: str | None = None
    fallback: bool = False

    def headers(self) -> dict[str, str]:
        """``X-RateLimit-Limit/Remaining/Reset`` (whole seconds), plus ``Retry-After`` when refused."""
        if self.error is not None and not self.fallback:
            return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))} if not self.allowed else {}
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_s)),
        }
        if not self.allowed:
            # Retry-After takes whole seconds (RFC 9110); never 0, or clients spin.
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


def _check_limits(rate: float, burst: int) -> None:
    if not rate > 0:
        raise ValueError(f"rate must be > 0 requests/second, got {rate}")
    if burst < 1:
        raise ValueError(f"burst must be >= 1, got {burst}")


class TokenBucket:
    """A token bucket: starts full with ``burst`` tokens, refills at ``rate`` tokens per second."""

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        _check_limits(rate, burst)
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def _refill(self, now: float) -> None:
        # max(): a clock that steps back must not drain the bucket.
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._updated = now

    def reconfigure(self, rate: float, burst: int) -> None:
        """Change the limits (a key's override was edited); tokens earned so far are kept, capped at ``burst``."""
        _check_limits(rate, burst)
        self._refill(self._clock())
        self.rate, self.burst = float(rate), int(burst)
        self._tokens = min(self._tokens, float(burst))

    def is_full(self) -> bool:
        """Whether the bucket has refilled to ``burst`` (then it equals a new bucket)."""
        self._refill(self._clock())
        return self._tokens >= self.burst

    def take_up_to(self, n: int) -> tuple[int, Decision]:
        """Take as many whole tokens as there are, up to ``n`` (a lease); the decision says what is left."""
        self._refill(self._clock())
        granted = max(0, min(int(n), int(math.floor(self._tokens))))
        self._tokens -= granted
        return granted, Decision(
            allowed=granted > 0,
            remaining=int(math.floor(self._tokens)),
            limit=self.burst,
            reset_s=(self.burst - self._tokens) / self.rate,
            retry_after_s=0.0 if granted else (1.0 - self._tokens) / self.rate,
        )

    def acquire(self, cost: float = 1.0) -> Decision:
        """Take ``cost`` tokens if there are enough; say how long to wait otherwise."""
        self._refill(self._clock())
        allowed = self._tokens >= cost
        if allowed:
            self._tokens -= cost
        retry_after = 0.0 if allowed else (cost - self._tokens) / self.rate
        return Decision(
            allowed=allowed,
            remaining=int(math.floor(self._tokens)),
            limit=self.burst,
            reset_s=(self.burst - self._tokens) / self.rate,
            retry_after_s=retry_after,
        )


class RateLimiter(ABC):
    """Where buckets live. ``key_id`` names the bucket; ``rate``/``burst`` are that key's limits."""

    @abstractmethod
    def acquire(self, key_id: str, rate: float, burst: int) -> Decision:
        """Take one token from ``key_id``'s bucket (created full on first use)."""

    async def acquire_async(self, key_id: str, rate: float, burst: int) -> Decision:
        """:meth:`acquire` for an event loop; override when the call does I/O."""
        return self.acquire(key_id, rate, burst)


class InMemoryRateLimiter(RateLimiter):
    """Buckets in this process: exact, but per process (one uvicorn process, tests).

    At most ``max_buckets`` buckets are kept: shopper sessions and client
    addresses each get one, so their number is not ours to choose. Past the
    cap, buckets that have refilled completely are dropped first (a full bucket
    and a missing one give the same answer); then the least recently used.
    """

    def __init__(self, clock: Clock = time.monotonic, max_buckets: int = 200_000) -> None:
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be >= 1, got {max_buckets}")
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()
        self.max_buckets = max_buckets

    def acquire(self, key_id: str, rate: float, burst: int) -> Decision:
        with self._lock:
            return self._bucket(key_id, rate, burst).acquire()

    def lease(self, key_id: str, rate: float, burst: int, n: int) -> tuple[int, Decision]:
        """Take up to ``n`` tokens of ``key_id``'s bucket at once (a replica's lease, :mod:`aisys.gateway.leases`)."""
        with self._lock:
            return self._bucket(key_id, rate, burst).take_up_to(n)

    def _bucket(self, key_id: str, rate: float, burst: int) -> TokenBucket:
        bucket = self._buckets.get(key_id)
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                self._evict()  # before inserting: the new (full) bucket must not be the one dropped
            bucket = self._buckets[key_id] = TokenBucket(rate, burst, self._clock)
        else:
            self._buckets.move_to_end(key_id)
            if bucket.rate != rate or bucket.burst != burst:
                bucket.reconfigure(rate, burst)
        return bucket

    def _evict(self) -> None:
        # Full buckets first (forgetting them changes no answer), then the least recently used.
        # Down to 90% of the cap, so the O(n) sweep runs once per cap/10 new buckets, not per request.
        target = max(1, self.max_buckets * 9 // 10)
        for key in [key for key, bucket in self._buckets.items() if bucket.is_full()]:
            if len(self._buckets) <= target:
                break
            del self._buckets[key]
        while len(self._buckets) > target:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


def __getattr__(name: str) -> Any:
    """``RayRateLimiter`` and ``RateLimiterActor`` live in :mod:`aisys.gateway.shared_limiter` (they need Ray);
    importing them from here still works, and importing this module imports no Ray."""
    if name in ("RayRateLimiter", "RateLimiterActor"):
        from aisys.gateway import shared_limiter

        return getattr(shared_limiter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
