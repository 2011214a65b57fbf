"""The heap freeze that keeps full collections off the request path (aisys.serving.heap) and when it runs."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from fastapi.testclient import TestClient

from aisys.config import AppConfig, OnlineConfig
from aisys.serving.canary import CHAMPION
from aisys.serving.follow import AliasFollower
from aisys.serving.event_log import InMemoryEventLog
from aisys.serving.heap import freeze_long_lived_heap
from aisys.serving.routes import build_fastapi_app
from aisys.serving.rules import InMemoryInventory
from aisys.serving.service import OnlineService
from aisys.serving.session_store import InMemorySessionStore


@pytest.fixture
def thawed():
    """Every test here leaves the process's heap as it found it: nothing frozen."""
    gc.unfreeze()
    yield
    gc.unfreeze()


class _Cycle:
    def __init__(self) -> None:
        self.me = self  # only the cyclic collector can free it


def test_objects_alive_at_the_freeze_leave_the_collected_generations(thawed):
    kept = [object() for _ in range(1000)]
    done = freeze_long_lived_heap()
    assert gc.get_freeze_count() == done["frozen"] >= len(kept)
    assert all(count == 0 for count in gc.get_count()[1:])  # what was alive is frozen, not waiting in gen 1/2


def test_garbage_is_collected_before_freezing_and_a_refreeze_frees_a_swapped_out_cycle(thawed):
    garbage = _Cycle()
    gone = weakref.ref(garbage)
    del garbage
    freeze_long_lived_heap()
    assert gone() is None  # collected first, not frozen forever

    old_model = _Cycle()  # alive at the freeze (the model a replica serves), then swapped out
    old = weakref.ref(old_model)
    freeze_long_lived_heap()
    del old_model
    gc.collect()
    assert old() is not None  # frozen: a plain collection does not walk it
    freeze_long_lived_heap()  # what a swap runs: unfreeze, collect, freeze
    assert old() is None


class _Service:
    """What AliasFollower touches of an OnlineService."""

    def __init__(self) -> None:
        self.models: dict = {}

        class _Counters:
            champion_refusals = 0

        self.counters = _Counters()

    def set_model(self, arm, served) -> None:
        self.models[arm] = served


class _Served:
    def __init__(self, version: str) -> None:
        self.version = version


def test_the_follower_runs_the_hook_after_a_swap_only_and_survives_its_failure(caplog):
    service, alias, calls = _Service(), {"v": "1"}, []

    async def resolve(_alias):
        return alias["v"]

    async def load(_alias, version):
        return _Served(version)

    def hook():
        calls.append(service.models[CHAMPION].version)
        if len(calls) == 1:
            raise RuntimeError("boom")

    async def follow_for(seconds: float, follower: AliasFollower) -> None:
        follower.start()
        await asyncio.sleep(seconds)
        follower.stop()

    async def scenario():
        follower = AliasFollower(service, aliases={CHAMPION: "champion"}, resolve=resolve, load=load, every_s=0.01,
                                 after_swap=hook)
        await follow_for(0.2, follower)  # v1 loaded once, then nothing changes for many periods
        alias["v"] = "2"
        await follow_for(0.2, follower)

    asyncio.run(scenario())
    assert calls == ["1", "2"]  # once per swap, the new model already serving; the first hook's error logged
    assert service.models[CHAMPION].version == "2"
    assert any("after-swap hook failed" in r.getMessage() for r in caplog.records)


def _app(freeze_heap: bool):
    service = OnlineService(store=InMemorySessionStore(10, 10), event_log=InMemoryEventLog(),
                            inventory=InMemoryInventory(), online=OnlineConfig(), champion=None)
    return build_fastapi_app(service, freeze_heap=freeze_heap)


@pytest.mark.parametrize("freeze_heap", [True, False])
def test_the_app_freezes_the_heap_when_its_server_starts_it(thawed, freeze_heap):
    app = _app(freeze_heap)
    assert gc.get_freeze_count() == 0  # building the app freezes nothing: starting it does (uvicorn, Ray Serve)
    with TestClient(app) as client:  # runs the ASGI lifespan, as both servers do
        assert (gc.get_freeze_count() > 0) is freeze_heap
        assert client.get("/healthz").status_code in (200, 503)


def test_the_shipped_config_freezes():
    assert AppConfig().serve.freeze_heap is True
