"""The TTL response cache: hits, invalidation by a new event id, expiry, eviction, counters."""

from __future__ import annotations

import pytest

from aisys.config import config_from_dict
from aisys.gateway.cache import CacheKey, ResponseCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def key(user="u1", k=10, version="3", arm="champion", last_event="e1") -> CacheKey:
    return CacheKey(user_id=user, k=k, model_version=version, arm=arm, last_event_id=last_event)


def test_hit_then_a_new_event_id_misses():
    cache = ResponseCache(ttl_s=30, max_entries=10)
    assert cache.get(key()) is None
    cache.put(key(), {"items": [1, 2]})
    assert cache.get(key()) == {"items": [1, 2]}
    # The user posts an event: their last event id changes, so does the key.
    assert cache.get(key(last_event="e2")) is None
    assert (cache.hits, cache.misses) == (1, 2)


@pytest.mark.parametrize(
    "changed", [key(k=5), key(version="4"), key(arm="challenger"), key(user="u2"), key(last_event=None)]
)
def test_every_part_of_the_key_matters(changed):
    cache = ResponseCache(ttl_s=30, max_entries=10)
    cache.put(key(), "answer")
    assert cache.get(changed) is None


def test_entries_expire_after_the_ttl():
    clock = FakeClock()
    cache = ResponseCache(ttl_s=5, max_entries=10, timer=clock)
    cache.put(key(), "answer")
    clock.now = 4.9
    assert cache.get(key()) == "answer"
    clock.now = 5.1
    assert cache.get(key()) is None
    assert len(cache) == 0


def test_least_recently_used_entries_are_evicted_beyond_max_entries():
    cache = ResponseCache(ttl_s=30, max_entries=2)
    cache.put(key(user="a"), "A")
    cache.put(key(user="b"), "B")
    cache.get(key(user="a"))  # a is now more recent than b
    cache.put(key(user="c"), "C")
    assert cache.get(key(user="b")) is None
    assert cache.get(key(user="a")) == "A" and cache.get(key(user="c")) == "C"


def test_callbacks_see_each_hit_and_miss():
    cache = ResponseCache(ttl_s=30, max_entries=10)
    seen: list[tuple[str, CacheKey]] = []
    cache.on_hit = lambda k: seen.append(("hit", k))
    cache.on_miss = lambda k: seen.append(("miss", k))
    cache.get(key())
    cache.put(key(), "x")
    cache.get(key())
    assert seen == [("miss", key()), ("hit", key())]


def test_none_cannot_be_cached_and_bad_sizes_are_refused():
    cache = ResponseCache(ttl_s=1, max_entries=1)
    with pytest.raises(ValueError, match="None"):
        cache.put(key(), None)
    with pytest.raises(ValueError, match="ttl_s"):
        ResponseCache(ttl_s=0, max_entries=1)
    with pytest.raises(ValueError, match="max_entries"):
        ResponseCache(ttl_s=1, max_entries=0)


def test_from_config_follows_the_ttl_setting():
    assert ResponseCache.from_config(config_from_dict({"gateway": {"cache_ttl_s": 0}})) is None
    cache = ResponseCache.from_config(config_from_dict({"gateway": {"cache_ttl_s": 2, "cache_max_entries": 7}}))
    assert (cache.ttl_s, cache.max_entries) == (2.0, 7)
