"""Issue 17 (hand-moved aliases): with serve.require_recorded_promotion, a replica refuses a champion the gate did
not promote. Real MLflow registry (SQLite), no Ray started."""

from __future__ import annotations

import asyncio

import pytest

from aisys.registry.mlflow_registry import set_alias
from aisys.registry.promotion import make_champion
from aisys.serving.deployment import check_promotion_recorded, promotion_recorded
from tests.ray.test_serve import register_untrained, shop_events


def test_promotion_recorded_is_membership_in_the_history():
    assert promotion_recorded("3", ["1", "3"]) and promotion_recorded(3, ["3"])
    assert not promotion_recorded("2", ["1", "3"]) and not promotion_recorded(None, ["1"])


def test_a_hand_moved_champion_alias_is_refused(small_config):
    cfg = small_config
    events = shop_events()
    first = register_untrained(cfg, events, "snap-1", alias=None).version
    second = register_untrained(cfg, events, "snap-1", seed=1, alias=None).version
    make_champion(cfg, first)  # through the gate's record
    alias = cfg.registry.champion_alias

    cfg.serve.require_recorded_promotion = True
    asyncio.run(check_promotion_recorded(cfg, alias, None))  # the recorded champion is served
    set_alias(cfg, alias, second)  # moved by hand (the MLflow UI, a script): no gate decision recorded
    with pytest.raises(PermissionError, match="no gate decision promoted it"):
        asyncio.run(check_promotion_recorded(cfg, alias, None))
    with pytest.raises(PermissionError):
        asyncio.run(check_promotion_recorded(cfg, alias, second))  # as the alias follower asks
    asyncio.run(check_promotion_recorded(cfg, "challenger", second))  # only the champion is gated

    cfg.serve.require_recorded_promotion = False  # the default: `aisys train` sets the first champion directly
    asyncio.run(check_promotion_recorded(cfg, alias, None))
