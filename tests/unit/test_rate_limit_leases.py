"""Leased tokens: a replica spends blocks leased from the shared bucket, never more than the bucket holds."""

from __future__ import annotations

import asyncio

import pytest

from aisys.gateway.leases import LeaseBook
from aisys.gateway.ratelimit import InMemoryRateLimiter, RayRateLimiter, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_lease_takes_what_the_bucket_holds_and_no_more():
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, burst=10, clock=clock)
    granted, decision = bucket.take_up_to(4)
    assert granted == 4 and decision.allowed and decision.remaining == 6
    granted, decision = bucket.take_up_to(100)
    assert granted == 6 and decision.remaining == 0
    granted, refused = bucket.take_up_to(3)
    assert granted == 0 and not refused.allowed and refused.retry_after_s == pytest.approx(1.0)


def test_the_lease_book_spends_locally_and_drops_expired_tokens():
    clock = FakeClock()
    book = LeaseBook(max_block=64, ttl_s=1.0, clock=clock)
    assert book.block_size(1_000_000) == 64 and book.block_size(100) == 12 and book.block_size(3) == 1
    assert book.take("k") is None  # nothing leased yet: ask the actor
    _, shared = TokenBucket(1.0, 100, clock).take_up_to(12)
    book.add("k", 12, shared)
    spent = [book.take("k") for _ in range(12)]
    assert all(d.allowed for d in spent) and spent[-1].remaining == shared.remaining
    assert book.take("k") is None  # the block is spent
    book.add("k", 7, shared)
    assert not book.claim_refill("k", 100)  # 7 of a 12-block left: not yet half spent
    book.take("k")
    assert book.claim_refill("k", 100) and not book.claim_refill("k", 100)  # one refill at a time
    clock.now += 1.0
    assert book.take("k") is None and book.held("k") == 0  # unspent tokens expired: dropped, never returned


class FakeActor:
    """The shared actor's body in this process: ``lease.remote`` answers through a Ray-like future."""

    def __init__(self, clock) -> None:
        self.limiter = InMemoryRateLimiter(clock)
        self.calls = 0

    class _Method:
        def __init__(self, fn) -> None:
            self.fn = fn

        def remote(self, *args):
            import concurrent.futures

            future = concurrent.futures.Future()
            future.set_result(self.fn(*args))
            return type("Ref", (), {"future": lambda _self: future})()

    @property
    def lease(self):
        def lease(*args):
            self.calls += 1
            return self.limiter.lease(*args)

        return self._Method(lease)


def test_two_replicas_leasing_one_bucket_never_exceed_it():
    clock = FakeClock()
    actor = FakeActor(clock)
    replicas = [RayRateLimiter(clock=clock, lease_max_tokens=64) for _ in range(2)]
    for replica in replicas:
        replica.actor = lambda: actor  # the one shared actor

    async def hammer() -> int:
        allowed = 0
        for n in range(1000):
            allowed += (await replicas[n % 2].acquire_async("key", 1.0, 200)).allowed
            await asyncio.sleep(0)  # let background refills run
        return allowed

    allowed = asyncio.run(hammer())
    assert allowed == 200  # the burst, shared: no replica adds its own
    assert actor.calls < 200  # most requests spent leased tokens without asking the actor


def test_an_unreachable_actor_is_counted_as_degraded_and_the_local_bucket_limits(monkeypatch):
    from aisys.serving.telemetry import ServingTelemetry

    recorded = []
    monkeypatch.setattr("aisys.monitoring.metrics.record_rate_limiter_degraded", lambda: recorded.append(1))
    clock = FakeClock()
    monkeypatch.setattr("ray.is_initialized", lambda: False)  # even if another test in this process started Ray
    limiter = RayRateLimiter(clock=clock)  # Ray is not running: every actor call fails
    limiter.on_degraded = ServingTelemetry().rate_limiter_degraded  # what a replica wires (deployment.py)
    decisions = [limiter.acquire("k", 1.0, 3) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert limiter.degraded == 5 and len(recorded) == 5
