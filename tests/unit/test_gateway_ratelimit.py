"""Token buckets and the in-process limiter, on an injected clock (no Ray)."""

from __future__ import annotations

import pytest

from aisys.gateway.ratelimit import Decision, InMemoryRateLimiter, RayRateLimiter, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_bucket_allows_the_burst_then_refuses_with_the_wait():
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    decisions = [bucket.acquire() for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    refused = decisions[-1]
    assert refused.limit == 3
    assert refused.retry_after_s == pytest.approx(0.5)  # one token at 2/s
    assert refused.reset_s == pytest.approx(1.5)  # three tokens to full


def test_bucket_refills_with_time_and_never_beyond_burst():
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        bucket.acquire()
    clock.advance(0.49)
    assert not bucket.acquire().allowed
    clock.advance(0.02)
    assert bucket.acquire().allowed
    clock.advance(3600)
    allowed = [bucket.acquire().allowed for _ in range(5)]
    assert allowed == [True, True, True, False, False]


def test_a_clock_stepping_back_does_not_drain_or_fill_the_bucket():
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, burst=2, clock=clock)
    bucket.acquire()
    clock.advance(-50)
    decision = bucket.acquire()
    assert decision.allowed and decision.remaining == 0


def test_headers_of_allowed_and_refused_decisions():
    ok = Decision(allowed=True, remaining=4, limit=5, reset_s=0.2, retry_after_s=0.0)
    assert ok.headers() == {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "4", "X-RateLimit-Reset": "1"}
    refused = Decision(allowed=False, remaining=0, limit=5, reset_s=2.5, retry_after_s=0.1)
    assert refused.headers()["Retry-After"] == "1"  # whole seconds, never 0
    assert refused.headers()["X-RateLimit-Reset"] == "3"
    degraded = Decision(allowed=True, remaining=0, limit=5, reset_s=0, retry_after_s=1, error="down")
    assert degraded.headers() == {}


def test_limiter_keeps_one_bucket_per_key():
    clock = FakeClock()
    limiter = InMemoryRateLimiter(clock)
    assert [limiter.acquire("a", 1.0, 2).allowed for _ in range(3)] == [True, True, False]
    assert limiter.acquire("b", 1.0, 2).allowed
    assert len(limiter) == 2


def test_limiter_applies_changed_limits_to_an_existing_bucket():
    clock = FakeClock()
    limiter = InMemoryRateLimiter(clock)
    for _ in range(5):
        limiter.acquire("a", 1.0, 5)
    assert not limiter.acquire("a", 1.0, 5).allowed
    clock.advance(1.0)
    # A new, faster rate applies from now on; the earned token is kept.
    assert limiter.acquire("a", 10.0, 5).allowed
    clock.advance(0.1)
    decision = limiter.acquire("a", 10.0, 5)
    assert decision.allowed and decision.limit == 5


@pytest.mark.parametrize("rate, burst", [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_invalid_limits_are_refused(rate, burst):
    with pytest.raises(ValueError, match="rate|burst"):
        TokenBucket(rate, burst)


def test_an_unreachable_actor_fails_open_to_local_buckets_not_to_unlimited(monkeypatch):
    """Issue 17: one slow call used to lift every limit for retry_every_s; now each replica keeps limiting."""
    # Every call to the shared actor fails, as when it is down (a Ray that another test in this process started
    # must not answer).
    monkeypatch.setattr("ray.is_initialized", lambda: False)
    clock = FakeClock()
    limiter = RayRateLimiter(fail_open=True, retry_every_s=1.0, clock=clock)
    decisions = [limiter.acquire("k", 1.0, 3) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert all(d.error and d.fallback for d in decisions) and limiter.errors == 1  # backing off, not retrying
    assert decisions[-1].headers()["Retry-After"] == "1"
    clock.now += 1.0
    assert limiter.acquire("k", 1.0, 3).allowed  # refilled locally; the actor was asked again and failed again
    assert limiter.errors == 2
    closed = RayRateLimiter(fail_open=False, clock=clock).acquire("k", 1.0, 3)
    assert not closed.allowed and not closed.fallback


def test_buckets_are_bounded_dropping_full_ones_first():
    clock = FakeClock()
    limiter = InMemoryRateLimiter(clock, max_buckets=10)
    for _ in range(3):
        limiter.acquire("busy", 0.001, 3)  # emptied, refills slowly: must survive the flood below
    for n in range(100):
        limiter.acquire(f"session:{n}", 1.0, 3)
        clock.now += 1.0  # each session's bucket is full again a second later: those go first
    assert len(limiter) <= 10
    assert not limiter.acquire("busy", 0.001, 3).allowed  # not forgotten (forgetting would refill it)
