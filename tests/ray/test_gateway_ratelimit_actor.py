"""The shared rate-limiter actor: one bucket across clients (replicas), within 5% under 16 threads, fail-open/closed."""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from aisys.gateway.ratelimit import RayRateLimiter

pytestmark = pytest.mark.ray

NAMESPACE = "aisys-tests"


@pytest.fixture
def actor_name(ray_session):
    """A fresh actor name per test; the detached actor is killed afterwards."""
    name = f"ratelimit-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        ray_session.kill(ray_session.get_actor(name, namespace=NAMESPACE))
    except ValueError:
        pass  # never created, or already gone


def test_two_clients_share_one_bucket(ray_session, actor_name):
    replica_a = RayRateLimiter(actor_name, NAMESPACE)
    replica_b = RayRateLimiter(actor_name, NAMESPACE)
    # A slow refill, so the test's own duration adds no tokens worth counting.
    assert all(replica_a.acquire("key1", 0.001, 3).allowed for _ in range(3))
    refused = replica_b.acquire("key1", 0.001, 3)
    assert not refused.allowed and refused.error is None and refused.retry_after_s > 100
    assert replica_b.acquire("key2", 0.001, 3).allowed  # another key, another bucket
    # ONE actor by that name serves both.
    actor = ray_session.get_actor(actor_name, namespace=NAMESPACE)
    assert ray_session.get(actor.bucket_count.remote()) == 2


def test_async_acquire_shares_the_same_bucket(ray_session, actor_name):
    limiter = RayRateLimiter(actor_name, NAMESPACE)
    assert limiter.acquire("k", 0.001, 2).allowed

    async def two_more():
        return [await limiter.acquire_async("k", 0.001, 2) for _ in range(2)]

    first, second = asyncio.run(two_more())
    assert first.allowed and not second.allowed and second.error is None


def test_sixteen_threads_through_two_clients_stay_within_5_percent(ray_session, actor_name):
    rate, burst = 10.0, 200  # 640 requests outlast the limit for ~44 s of a slow machine
    clients = [RayRateLimiter(actor_name, NAMESPACE, timeout_s=10.0) for _ in range(2)]
    clients[0].acquire("warm-up", rate, burst)  # create the actor before the clock starts
    per_thread = 40  # 640 requests in all, far more than the limit allows

    def hammer(i: int) -> int:
        client = clients[i % 2]
        return sum(client.acquire("shared", rate, burst).allowed for _ in range(per_thread))

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        allowed = sum(pool.map(hammer, range(16)))
    elapsed = time.monotonic() - started

    limit = burst + rate * elapsed  # what a correct shared bucket lets through in that time
    assert allowed <= 16 * per_thread
    assert abs(allowed - limit) <= 0.05 * limit, (allowed, limit, elapsed)
    assert all(c.errors == 0 for c in clients)


@pytest.mark.parametrize("fail_open", [True, False])
def test_an_unreachable_actor_fails_as_configured_then_recovers(ray_session, actor_name, fail_open):
    limiter = RayRateLimiter(actor_name, NAMESPACE, fail_open=fail_open, retry_every_s=0.5)
    errors: list[str] = []
    limiter.on_error = errors.append
    assert limiter.acquire("k", 1.0, 5).allowed
    ray_session.kill(limiter.actor())  # no_restart: the actor is gone for good

    decision = limiter.acquire("k", 1.0, 5)
    assert decision.allowed is fail_open and decision.error and actor_name in decision.error
    assert limiter.errors == 1 and len(errors) == 1
    # While backing off, no call is attempted and the same default applies at once.
    began = time.monotonic()
    assert limiter.acquire("k", 1.0, 5).allowed is fail_open
    assert time.monotonic() - began < 0.1 and limiter.errors == 1

    time.sleep(0.6)
    recovered = limiter.acquire("k", 1.0, 5)  # looks up the name again: a new actor, a full bucket
    assert recovered.allowed and recovered.error is None and recovered.remaining == 4
