"""Issue 17 (hand-moved aliases): by default (serve.require_recorded_promotion) a replica serves a champion only if
aisys recorded it; every code path of ours that moves the alias records it. Real MLflow registry (SQLite), no Ray."""

from __future__ import annotations

import asyncio
import json
import logging

import mlflow
import pytest

from aisys.cli import main
from aisys.config import AppConfig
from aisys.monitoring import metrics
from aisys.registry.champion import champion_history, is_recorded_champion
from aisys.registry.mlflow_registry import set_alias
from aisys.registry.promotion import rollback
from aisys.serving.canary import CHAMPION
from aisys.serving.deployment import check_promotion_recorded
from aisys.serving.event_log import InMemoryEventLog
from aisys.serving.follow import AliasFollower
from aisys.serving.rules import InMemoryInventory
from aisys.serving.service import OnlineService, ServedModel
from aisys.serving.session_store import InMemorySessionStore
from tests.ray.test_serve import register_untrained, shop_events


def move_by_hand(cfg: AppConfig, version: str) -> None:
    """What the MLflow UI or a script does: the alias moves, nothing of ours runs."""
    mlflow.MlflowClient().set_registered_model_alias(cfg.registry.model_name, cfg.registry.champion_alias, version)


def check(cfg: AppConfig, alias: str | None, version: str | None = None, model_uri: str | None = None) -> None:
    asyncio.run(check_promotion_recorded(cfg, alias, version, model_uri))


def test_the_recorded_champion_is_the_last_entry_of_the_history():
    assert is_recorded_champion("3", ["1", "3"]) and is_recorded_champion(3, ["3"])
    assert not is_recorded_champion("1", ["1", "3"])  # once champion, since replaced: a hand move back is refused
    assert not is_recorded_champion("2", ["1", "3"]) and not is_recorded_champion(None, ["1"])
    assert not is_recorded_champion("1", [])


@pytest.mark.slow  # one real model registration (MLflow's log_model): ~15 s alone, more on a busy box
def test_the_default_refuses_a_hand_moved_alias_and_our_paths_record(small_config, monkeypatch, tmp_path, capsys):
    cfg = small_config
    assert cfg.serve.require_recorded_promotion  # on by default
    monkeypatch.setattr("aisys.serving.deployment.RECORDED_CHECK_WAIT_S", 0.0)
    events = shop_events()
    alias = cfg.registry.champion_alias
    check(cfg, alias)  # no registered model, no champion: the load that follows names what is missing

    first = register_untrained(cfg, events, "snap-1").version  # log_and_register(alias=champion) records
    # The check reads only aliases and tags: bare versions (no model files) are enough for the others.
    bare = [mlflow.MlflowClient().create_model_version(cfg.registry.model_name, source=tmp_path.as_uri())
            for _ in range(2)]
    second, third = (str(v.version) for v in bare)
    assert champion_history(cfg) == [first]
    check(cfg, alias)

    move_by_hand(cfg, second)  # no gate decision, no record
    with pytest.raises(PermissionError, match=f"version {second} .* ends with version {first}.*aisys rollback"):
        check(cfg, alias)  # a starting replica
    with pytest.raises(PermissionError):
        check(cfg, alias, second)  # the alias follower, with the version it resolved
    with pytest.raises(PermissionError):
        check(cfg, None, model_uri=f"models:/{cfg.registry.model_name}@{alias}")  # the alias by URI
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(cfg.model_dump(mode="json")))
    assert main(["serve", "--config", str(config)]) == 1  # `aisys serve` says so before starting anything
    assert f"version {second} of 'aisys-recommender' holds alias 'champion'" in capsys.readouterr().err
    check(cfg, None, model_uri=f"models:/{cfg.registry.model_name}/{second}")  # a pinned version is the operator's
    check(cfg, "challenger", second)  # only the champion is gated: the challenger is the canary's experiment

    assert rollback(cfg) == (second, first)  # back to the last recorded champion, recorded
    check(cfg, alias)
    set_alias(cfg, alias, third)  # our set_alias records the champion
    check(cfg, alias)
    assert champion_history(cfg) == [first, third]

    move_by_hand(cfg, first)  # back to an earlier champion by hand: still a hand move
    with pytest.raises(PermissionError):
        check(cfg, alias)

    cfg.serve.require_recorded_promotion = False  # the off switch: a registry whose champions other tools move
    check(cfg, alias)


class _Info:
    def __init__(self, version: str) -> None:
        self.version, self.snapshot_id, self.name = version, None, "aisys-recommender"


def test_the_follower_keeps_serving_logs_and_counts_a_refused_champion(caplog):
    """The replica's alias follower: a refused version leaves the current model serving; logged and counted once."""
    sink = metrics.InMemoryMetricsSink()
    metrics.set_metrics_sink(sink)
    serving = ServedModel(recommender=None, info=_Info("1"))
    service = OnlineService(store=InMemorySessionStore(), event_log=InMemoryEventLog(), inventory=InMemoryInventory(),
                            online=AppConfig().online, champion=serving)
    alias = {"champion": "2"}
    loaded: list[str] = []

    async def resolve(name: str) -> str | None:
        return alias.get(name)

    async def load(name: str, version: str) -> ServedModel:
        if version == "2":
            raise PermissionError("version 2 was not made champion by aisys")
        loaded.append(version)
        return ServedModel(recommender=None, info=_Info(version))

    follower = AliasFollower(service, aliases={CHAMPION: "champion"}, resolve=resolve, load=load, every_s=0)
    try:
        with caplog.at_level(logging.WARNING, logger="aisys.serving.follow"):
            for _ in range(3):
                assert asyncio.run(follower.check_once()) == []
        assert service.models[CHAMPION] is serving  # the current model keeps serving
        assert service.counters.snapshot()["champion_refusals"] == 1  # once per hand move, not once per period
        assert sink.value("aisys_champion_refused_total", model_version="2") == 1
        refusals = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 1 and refusals[0].exc_info is None  # one line, no traceback

        alias["champion"] = "1"  # rolled back to what it serves, then moved by hand again: counted again
        assert asyncio.run(follower.check_once()) == []
        alias["champion"] = "2"
        assert asyncio.run(follower.check_once()) == [] and service.counters.champion_refusals == 2

        alias["champion"] = "3"  # recorded through aisys: followed
        assert asyncio.run(follower.check_once()) == [CHAMPION] and loaded == ["3"]
    finally:
        metrics.set_metrics_sink(None)
