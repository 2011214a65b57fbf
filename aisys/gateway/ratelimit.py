"""Per-key token-bucket rate limits, shared by every replica.

- :class:`TokenBucket` is the pure algorithm: ``burst`` tokens, refilled at
  ``rate`` per second, one token per request, clock injectable.
- :class:`RateLimiter` is the interface the gateway calls:
  ``acquire(key_id, rate, burst) -> Decision``.
- :class:`InMemoryRateLimiter` keeps the buckets in this process (tests, a
  single uvicorn process).
- :class:`RayRateLimiter` asks ONE named, detached Ray actor that holds every
  bucket, so a key's limit holds across all Serve replicas instead of being
  multiplied by their number.

If the actor cannot be reached (dead, or slower than ``timeout_s``; the first
call after the actor is (re)created may take up to ``connect_timeout_s`` while
its process starts, which :meth:`RayRateLimiter.connect` does at server start),
the limiter *fails open* by default, but not unlimited: while the actor is
unreachable each replica limits on its own, with a local per-replica
:class:`InMemoryRateLimiter` (same rate and burst per bucket), so a caller gets
at most N replicas times its limit instead of everything; the failure is
counted and logged, and the actor is looked up (or re-created) again after
``retry_every_s``. Failing closed would turn a limiter outage into a full API
outage. ``fail_open=False`` (``gateway.rate_limit_fail_open: false``) refuses
instead (the gateway answers 503).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from aisys.config import AppConfig

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
            bucket = self._buckets.get(key_id)
            if bucket is None:
                if len(self._buckets) >= self.max_buckets:
                    self._evict()  # before inserting: the new (full) bucket must not be the one dropped
                bucket = self._buckets[key_id] = TokenBucket(rate, burst, self._clock)
            else:
                self._buckets.move_to_end(key_id)
                if bucket.rate != rate or bucket.burst != burst:
                    bucket.reconfigure(rate, burst)
            return bucket.acquire()

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


class RateLimiterActor:
    """The body of the shared Ray actor: an :class:`InMemoryRateLimiter` behind async methods.

    Async, so calls are served on one event loop without a thread per call;
    ``acquire`` never awaits, so each call runs to completion before the next
    starts and needs no further locking.
    """

    def __init__(self) -> None:
        self._limiter = InMemoryRateLimiter()

    async def acquire(self, key_id: str, rate: float, burst: int) -> Decision:
        return self._limiter.acquire(key_id, rate, burst)

    async def bucket_count(self) -> int:
        return len(self._limiter)


@functools.lru_cache(maxsize=1)
def _remote_actor_class() -> Any:
    import ray

    # num_cpus=0: the actor does microseconds of work per call and must not
    # take a CPU from the replicas or training on a 2-core machine.
    return ray.remote(num_cpus=0)(RateLimiterActor)


class RayRateLimiter(RateLimiter):
    """Buckets in ONE named, detached Ray actor shared by every client in the cluster.

    Clients that use the same ``name``/``namespace`` (every replica, given the
    same config) find the same actor through ``get_if_exists=True``; the first
    one creates it. See the module docstring for the fail-open decision.
    ``errors`` counts failed calls; ``on_error(message)`` is called for each.
    """

    def __init__(
        self,
        name: str = "aisys-rate-limiter",
        namespace: str = "aisys",
        *,
        fail_open: bool = True,
        timeout_s: float = 1.0,
        retry_every_s: float = 1.0,
        connect_timeout_s: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.fail_open = fail_open
        self.timeout_s = timeout_s
        self.retry_every_s = retry_every_s
        self.connect_timeout_s = connect_timeout_s
        self.errors = 0
        self.on_error: Callable[[str], None] | None = None
        self._clock = clock
        self._lock = threading.Lock()
        self._actor: Any = None
        self._ready = False  # has the actor answered since it was (re)resolved?
        self._retry_at = float("-inf")
        # Decides while the actor is unreachable (fail open): per replica, but never unlimited.
        self._local = InMemoryRateLimiter(clock)

    @classmethod
    def from_config(cls, cfg: "AppConfig") -> "RayRateLimiter":
        """The limiter named by ``cfg.gateway`` (actor name, namespace, timeout, fail-open)."""
        g = cfg.gateway
        return cls(
            g.rate_limit_actor_name,
            g.rate_limit_namespace,
            fail_open=g.rate_limit_fail_open,
            timeout_s=g.rate_limit_timeout_s,
        )

    def actor(self) -> Any:
        """The shared actor's handle, created on first use (``get_if_exists``: one per name).

        Raises if Ray is not running rather than letting a remote call start a
        private Ray as a side effect.
        """
        import ray

        with self._lock:
            if self._actor is None:
                if not ray.is_initialized():
                    raise RuntimeError(
                        "Ray is not running: start it first, or set gateway.rate_limit_backend: memory"
                    )
                self._actor = (
                    _remote_actor_class()
                    .options(
                        name=self.name,
                        namespace=self.namespace,
                        get_if_exists=True,
                        # Detached: it outlives the replica that happened to
                        # create it, so the others keep their buckets.
                        lifetime="detached",
                        max_restarts=-1,
                    )
                    .remote()
                )
            return self._actor

    def connect(self) -> bool:
        """Create or find the actor and wait (up to ``connect_timeout_s``) until it answers.

        Call it when a server starts, so the first request does not wait for
        the actor's process to start. Returns False (and logs) on failure; the
        requests then take the fail-open/closed default until it is reachable.
        """
        import ray

        try:
            ray.get(self.actor().bucket_count.remote(), timeout=self.connect_timeout_s)
        except Exception as err:  # reported and retried by the request path
            self._note_failure(err)
            return False
        self._ready = True
        return True

    def _timeout(self) -> float:
        # A newly created actor needs its own process first (seconds on a busy
        # machine); only calls to an actor that has answered get the short budget.
        return self.timeout_s if self._ready else max(self.timeout_s, self.connect_timeout_s)

    def _backing_off(self) -> bool:
        return self._clock() < self._retry_at

    def _unavailable(self, key_id: str, rate: float, burst: int, message: str) -> Decision:
        if self.fail_open:
            local = self._local.acquire(key_id, rate, burst)
            return dataclasses.replace(local, error=message, fallback=True)
        return Decision(
            allowed=False,
            remaining=0,
            limit=int(burst),
            reset_s=0.0,
            retry_after_s=self.retry_every_s,
            error=message,
        )

    def _failed(self, err: BaseException, key_id: str, rate: float, burst: int) -> Decision:
        return self._unavailable(key_id, rate, burst, self._note_failure(err))

    def _note_failure(self, err: BaseException) -> str:
        """Count, log and report a failed call, start the back-off; return the message."""
        message = f"rate limiter actor {self.namespace}/{self.name} unreachable: {type(err).__name__}: {err}"
        with self._lock:
            self._actor = None  # look it up (or re-create it) after the back-off
            self._ready = False
            self._retry_at = self._clock() + self.retry_every_s
            self.errors += 1
        logger.warning("%s; failing %s for %.1f s", message,
                       "open (local per-replica buckets)" if self.fail_open else "closed", self.retry_every_s)
        if self.on_error is not None:
            self.on_error(message)
        return message

    def acquire(self, key_id: str, rate: float, burst: int) -> Decision:
        if self._backing_off():
            return self._unavailable(key_id, rate, burst, self._backoff_message())
        import ray

        try:
            decision = ray.get(self.actor().acquire.remote(key_id, rate, burst), timeout=self._timeout())
        except Exception as err:  # any failure to reach the actor takes the documented default
            return self._failed(err, key_id, rate, burst)
        self._ready = True
        return decision

    async def acquire_async(self, key_id: str, rate: float, burst: int) -> Decision:
        if self._backing_off():
            return self._unavailable(key_id, rate, burst, self._backoff_message())
        try:
            ref = self.actor().acquire.remote(key_id, rate, burst)
            decision = await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout=self._timeout())
        except Exception as err:  # as in acquire
            return self._failed(err, key_id, rate, burst)
        self._ready = True
        return decision

    def _backoff_message(self) -> str:
        return f"rate limiter actor {self.namespace}/{self.name} unreachable (retrying after {self.retry_every_s:g} s)"
