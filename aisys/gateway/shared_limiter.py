"""The shared rate limiter: ONE named, detached Ray actor holding every bucket, spent by replicas through leases.

:class:`RayRateLimiter` is the :class:`~aisys.gateway.ratelimit.RateLimiter` a replica's gateway uses with
``gateway.rate_limit_backend: actor``; what it does while the actor is unreachable is in the docstring of
:mod:`aisys.gateway.ratelimit`, how leases keep the limit shared in :mod:`aisys.gateway.leases`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from aisys.gateway.ratelimit import Clock, Decision, InMemoryRateLimiter, RateLimiter

if TYPE_CHECKING:
    from aisys.config import AppConfig

logger = logging.getLogger(__name__)


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

    async def lease(self, key_id: str, rate: float, burst: int, n: int) -> tuple[int, Decision]:
        return self._limiter.lease(key_id, rate, burst, n)

    async def bucket_count(self) -> int:
        return len(self._limiter)


@functools.lru_cache(maxsize=1)
def _remote_actor_class() -> Any:
    import ray

    # num_cpus=0: the actor does microseconds of work per call and must not
    # take a CPU from the replicas or training on a 2-core machine.
    return ray.remote(num_cpus=0)(RateLimiterActor)


class RayRateLimiter(RateLimiter):
    """Buckets in ONE named, detached Ray actor shared by every client in the cluster, spent through leases.

    Clients that use the same ``name``/``namespace`` (every replica, given the
    same config) find the same actor through ``get_if_exists=True``; the first
    one creates it. A client leases tokens in blocks (:class:`~aisys.gateway.leases.LeaseBook`: at most
    ``lease_max_tokens``, 1/8 of a key's burst, valid ``lease_ttl_s``) and spends them without a round trip;
    the next block is leased in the background when half is spent, so most requests never wait for the actor.
    See the module docstring for what happens while the actor is unreachable. ``errors`` counts failed calls;
    ``on_error(message)`` is called for each.
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
        lease_max_tokens: int = 64,
        lease_ttl_s: float = 1.0,
        clock: Clock = time.monotonic,
    ) -> None:
        from aisys.gateway.leases import LeaseBook

        self.name = name
        self.namespace = namespace
        self.fail_open = fail_open
        self.timeout_s = timeout_s
        self.retry_every_s = retry_every_s
        self.connect_timeout_s = connect_timeout_s
        self.errors = 0
        self.degraded = 0  # requests decided without the shared bucket (local bucket or fail-closed refusal)
        self.on_error: Callable[[str], None] | None = None
        # Told once per request decided without the shared bucket; a replica wires it to the
        # aisys_rate_limiter_degraded_total metric (the gateway does not import monitoring).
        self.on_degraded: Callable[[], None] | None = None
        self._clock = clock
        self._lock = threading.Lock()
        self._actor: Any = None
        self._ready = False  # has the actor answered since it was (re)resolved?
        self._retry_at = float("-inf")
        self.leases = LeaseBook(lease_max_tokens, lease_ttl_s, clock)
        self._refills: set[asyncio.Task] = set()  # background leases in flight (kept so none is collected)
        # Decides while the actor is unreachable (fail open): per replica, but never unlimited.
        self._local = InMemoryRateLimiter(clock)

    @classmethod
    def from_config(cls, cfg: "AppConfig") -> "RayRateLimiter":
        """The limiter named by ``cfg.gateway`` (actor name, namespace, timeout, fail-open, leases)."""
        g = cfg.gateway
        return cls(
            g.rate_limit_actor_name,
            g.rate_limit_namespace,
            fail_open=g.rate_limit_fail_open,
            timeout_s=g.rate_limit_timeout_s,
            lease_max_tokens=g.rate_limit_lease_max_tokens,
            lease_ttl_s=g.rate_limit_lease_ttl_s,
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
        self.degraded += 1
        if self.on_degraded is not None:
            try:
                self.on_degraded()
            except Exception:  # a metrics failure must not change the decision
                logger.debug("reporting the degraded limiter failed", exc_info=True)
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

    def _granted(self, key_id: str, granted: int, shared: Decision) -> Decision:
        """The decision for a request that had to wait for a lease: the first token of it, or the refusal."""
        self._ready = True
        if granted < 1:
            self.leases.note_refusal(key_id, shared)
            return shared
        self.leases.add(key_id, granted, shared)
        return self.leases.take(key_id) or shared

    def acquire(self, key_id: str, rate: float, burst: int) -> Decision:
        if (held := self.leases.take(key_id) or self.leases.refusal(key_id)) is not None:
            return held
        if self._backing_off():
            return self._unavailable(key_id, rate, burst, self._backoff_message())
        import ray

        try:
            ref = self.actor().lease.remote(key_id, rate, burst, self.leases.block_size(burst))
            granted, shared = ray.get(ref, timeout=self._timeout())
        except Exception as err:  # any failure to reach the actor takes the documented default
            return self._failed(err, key_id, rate, burst)
        return self._granted(key_id, granted, shared)

    async def acquire_async(self, key_id: str, rate: float, burst: int) -> Decision:
        if (held := self.leases.take(key_id)) is not None:
            if self.leases.claim_refill(key_id, burst) and not self._backing_off():
                task = asyncio.get_running_loop().create_task(self._refill(key_id, rate, burst))
                self._refills.add(task)
                task.add_done_callback(self._refills.discard)
            return held
        if (refused := self.leases.refusal(key_id)) is not None:
            return refused
        if self._backing_off():
            return self._unavailable(key_id, rate, burst, self._backoff_message())
        try:
            granted, shared = await self._lease_async(key_id, rate, burst)
        except Exception as err:  # as in acquire
            return self._failed(err, key_id, rate, burst)
        return self._granted(key_id, granted, shared)

    async def _lease_async(self, key_id: str, rate: float, burst: int) -> tuple[int, Decision]:
        ref = self.actor().lease.remote(key_id, rate, burst, self.leases.block_size(burst))
        return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout=self._timeout())

    async def _refill(self, key_id: str, rate: float, burst: int) -> None:
        """Lease the next block in the background (off every request's path); a failure starts the back-off."""
        try:
            granted, shared = await self._lease_async(key_id, rate, burst)
        except Exception as err:  # the lease runs out and the next request takes the documented default
            self.leases.refill_failed(key_id)
            self._note_failure(err)
            return
        self._ready = True
        if granted:
            self.leases.add(key_id, granted, shared)
        else:
            self.leases.refill_failed(key_id)

    def _backoff_message(self) -> str:
        return f"rate limiter actor {self.namespace}/{self.name} unreachable (retrying after {self.retry_every_s:g} s)"
