"""Zero-downtime swaps and the canary on a live Serve app: replicas follow the registry's aliases, except a champion
alias moved by hand (not recorded by aisys), which they refuse."""

import time

import httpx
import mlflow
import pytest

from aisys.gateway import ensure_dev_keys
from aisys.registry.mlflow_registry import set_alias
from aisys.registry.promotion import rollback
from aisys.serving.app import start_serving, stop_serving
from aisys.serving.canary import arm_for_user
from tests.load import VersionLoad
from tests.ray.test_serve import commit_snapshot, free_port, register_untrained, shop_events

pytestmark = pytest.mark.ray

CANARY_SHARE = 0.5


def wait_for(condition, timeout_s: float = 60.0, every_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the replicas to follow the alias"
        time.sleep(every_s)


@pytest.mark.slow
def test_swap_under_load_then_canary_then_rollback(ray_session, small_config):
    cfg = small_config
    cfg.serve.num_replicas = 1  # the arms' request counters below are one replica's
    cfg.serve.port = free_port()
    cfg.online.follow_alias_every_s = 0.5
    cfg.online.canary_share = CANARY_SHARE
    events = shop_events()
    snapshot_id = commit_snapshot(cfg, events)
    v1 = register_untrained(cfg, events, snapshot_id).version
    v2 = register_untrained(cfg, events, snapshot_id, seed=1, alias=None).version  # registered, not yet champion
    key = ensure_dev_keys(cfg)["dev-admin"]

    url = start_serving(cfg)
    try:
        with httpx.Client(base_url=url, timeout=30, headers={"X-API-Key": key}) as client:
            # 1. Move the champion alias while ~20 requests/s hit the app.
            with VersionLoad(url, key, [f"user{n}" for n in range(12)], k=5) as load:
                time.sleep(2.0)
                set_alias(cfg, "champion", v2)  # our path: recorded in the champion history
                wait_for(lambda: load.latest_versions() == {v2})
                time.sleep(1.0)
            outcomes = [r for res in load.results for r in res]
            assert len(outcomes) >= 40
            assert [r for r in outcomes if r[0] != 200] == []  # zero failed requests through the swap
            for res in load.results:  # each client saw v1, then v2, never back
                versions = [v for _, v in res]
                assert versions == sorted(versions, key=lambda v: v == v2) and versions[-1] == v2
            assert {v for _, v in outcomes} == {v1, v2}
            assert client.get("/model").json()["version"] == v2

            # 2. A challenger appears: the canary share of users gets it, stickily, named by arm.
            set_alias(cfg, "challenger", v1)
            wait_for(lambda: client.get("/healthz").json()["challenger_version"] == v1)
            users = [f"user{n}" for n in range(12)] + [f"visitor{n}" for n in range(20)]
            for _ in range(2):
                for user in users:
                    body = client.get(f"/recommendations/{user}").json()
                    arm = arm_for_user(user, CANARY_SHARE)
                    assert (body["arm"], body["model_version"]) == (arm, v1 if arm == "challenger" else v2)
            n_canary = sum(arm_for_user(u, CANARY_SHARE) == "challenger" for u in users)
            assert 0 < n_canary < len(users)
            requests = client.get("/admin/counters").json()["requests"]
            assert requests["challenger"] == 2 * n_canary and requests["champion"] >= 2 * (len(users) - n_canary)

            # 3. Rollback moves the alias back (recorded): the replicas follow.
            assert rollback(cfg) == (v2, v1)
            regular = next(u for u in users if arm_for_user(u, CANARY_SHARE) == "champion")
            wait_for(lambda: client.get(f"/recommendations/{regular}").json()["model_version"] == v1)
            assert client.get("/admin/counters").json()["swaps"] == 3

            # 4. The champion alias moved by hand in MLflow (no gate, no record): refused, counted, not served.
            mlflow.MlflowClient().set_registered_model_alias(cfg.registry.model_name, "champion", v2)
            wait_for(lambda: client.get("/admin/counters").json()["champion_refusals"] == 1)
            assert client.get("/model").json()["version"] == v1
            assert client.get(f"/recommendations/{regular}").json()["model_version"] == v1
            assert client.get("/admin/counters").json()["swaps"] == 3
    finally:
        stop_serving(cfg)
