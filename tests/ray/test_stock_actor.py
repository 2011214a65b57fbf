"""Stock shared through the named actor (``online.stock_backend="actor"``): a change made through one
replica's inventory reaches another's without a call per read, survives an actor restart (kept in the lake),
and a replica keeps its last known stock while the actor is away."""

import time

import pytest
import ray

from aisys.serving.stock_actor import (
    ActorInventory,
    drop_stock_actor,
    get_or_create_stock_actor,
    stock_state_uri,
)

pytestmark = pytest.mark.ray


def wait_for(check, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return True
        except ray.exceptions.RayError:  # the actor restarting: ask again
            pass
        time.sleep(0.02)
    return False


def test_a_stock_change_on_one_replica_reaches_the_other_and_survives_a_restart(ray_session, small_config):
    cfg = small_config
    drop_stock_actor(cfg)
    # Two independent lookups by name, as replicas on two nodes would make.
    first = ActorInventory(get_or_create_stock_actor(cfg), poll_timeout_s=1.0)
    second = ActorInventory(get_or_create_stock_actor(cfg), poll_timeout_s=1.0)
    try:
        assert first.out_of_stock() == frozenset()
        assert first.set_stock({"i1": False, "i2": False}) == {"i1", "i2"}
        assert first.out_of_stock() == {"i1", "i2"}  # the writer sees its change at once
        assert wait_for(lambda: second.out_of_stock() == {"i1", "i2"})  # the other, by its long poll
        second.set_stock({"i1": True})
        assert wait_for(lambda: first.out_of_stock() == {"i2"})

        # The set is kept in the lake: a new actor (a restart, a new head) starts from it.
        assert stock_state_uri(cfg).endswith("/online/stock.json")
        ray.kill(get_or_create_stock_actor(cfg), no_restart=False)
        assert wait_for(lambda: ray.get(get_or_create_stock_actor(cfg).snapshot.remote(), timeout=5)[0] == ["i2"],
                        timeout=30)
        assert second.out_of_stock() == {"i2"}  # kept while the actor was away
        first.set_stock({"i3": False})  # a write after the restart reaches the other replica too
        assert wait_for(lambda: second.out_of_stock() == {"i2", "i3"})
    finally:
        first.close()
        second.close()
        drop_stock_actor(cfg)
