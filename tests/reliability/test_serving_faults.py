"""Serving faults on real Ray Serve: a replica killed under load, then a champion whose model fails.

One Serve application (2 replicas, gateway on, real HTTP through Serve's proxy) for both tests:

1. kill one replica while 4 client threads send requests; every request is tried once more on a failure (one
   client retry), and the test counts both the first-attempt failures and the requests lost after the retry;
   Serve must start a replacement;
2. register a champion whose weights cannot score (an embedding smaller than its vocabulary: an IndexError in the
   forward pass); the replicas follow the alias, and every answer then comes from popularity, flagged
   ``model_error``, while ``/healthz`` says ``degraded``.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import torch

from aisys.config import config_from_dict
from aisys.features.sequences import build_vocabulary
from aisys.gateway import create_key
from aisys.gateway.keys import FileKeyStore, keys_file_path
from aisys.models.bundle import ModelBundle
from aisys.models.sasrec import SASRec, SASRecConfig
from aisys.registry.mlflow_registry import log_and_register
from aisys.serving.app import APP_NAME, start_serving, stop_serving
from aisys.serving.deployment import DEPLOYMENT_NAME
from tests.conftest import seed_mlflow_db, small_config_dict
from tests.reliability.conftest import report_figure
from tests.ray.test_serve import N_USERS, commit_snapshot, free_port, register_untrained, shop_events

pytestmark = [pytest.mark.reliability, pytest.mark.ray, pytest.mark.slow]  # a 2-replica Serve app, a replica kill

CLIENT_THREADS = 4


@pytest.fixture(scope="module")
def serving(ray_session, tmp_path_factory, mlflow_db_template):
    root = tmp_path_factory.mktemp("serving-faults")
    seed_mlflow_db(mlflow_db_template, root / "mlflow.db")  # small_config_dict's tracking URI
    cfg = config_from_dict(small_config_dict(root), "tests")
    cfg.serve.port = free_port()
    cfg.serve.num_replicas = 2
    cfg.online.latency_budget_ms = 5000  # a busy box must not trigger the budget fallback here
    cfg.online.follow_alias_every_s = 1.0
    events = shop_events()
    snapshot_id = commit_snapshot(cfg, events)
    register_untrained(cfg, events, snapshot_id)
    key = create_key(FileKeyStore(keys_file_path(cfg)), "load", ["admin"], rate_limit_per_s=1e6,
                     rate_limit_burst=1_000_000)
    url = start_serving(cfg)
    try:
        yield cfg, url, key, events, snapshot_id
    finally:
        stop_serving(cfg)


def replica_names(ray) -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::") and f"#{DEPLOYMENT_NAME}#" in a["name"]}


def running_replicas() -> int:
    from ray import serve

    status = serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME]
    return int(status.replica_states.get("RUNNING", 0))


class Load:
    """``CLIENT_THREADS`` threads asking for recommendations until stopped; one retry per failed request."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.requests = self.first_failures = self.lost = 0
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(CLIENT_THREADS)]

    def _attempt(self, client: httpx.Client, user: str) -> bool:
        try:
            return client.get(f"/recommendations/{user}").status_code == 200
        except httpx.HTTPError:
            return False

    def _run(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers={"X-API-Key": self.key}) as client:
            i = 0
            while not self.stop.is_set():
                user = f"user{(n + i) % N_USERS}"
                ok = self._attempt(client, user)
                retried_ok = ok or self._attempt(client, user)
                with self.lock:
                    self.requests += 1
                    self.first_failures += not ok
                    self.lost += not retried_ok
                i += 1

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def test_killing_a_replica_under_load_loses_no_request_and_it_is_replaced(serving, ray_session):
    cfg, url, key, _, _ = serving
    ray = ray_session
    before = replica_names(ray)
    assert len(before) == 2 and running_replicas() == 2
    victim = sorted(before)[0]
    with Load(url, key) as load:
        time.sleep(2.0)
        at_kill = load.requests
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed_at = time.perf_counter()
        deadline = killed_at + 60
        while time.perf_counter() < deadline:
            names = replica_names(ray)
            if victim not in names and len(names) == 2 and running_replicas() == 2:
                break
            time.sleep(0.2)
        replaced_s = time.perf_counter() - killed_at
        time.sleep(2.0)  # keep the load on the replacement for a while
    after = replica_names(ray)
    print(f"\nreplica kill: {load.requests} requests ({at_kill} before the kill), first-attempt failures "
          f"{load.first_failures}, lost after one retry {load.lost}, replaced in {replaced_s:.1f}s")
    report_figure(f"one of 2 Serve replicas killed (ray.kill) under {CLIENT_THREADS} client threads",
                  f"{load.requests} requests; replacement RUNNING after {replaced_s:.1f}s",
                  f"{load.first_failures} failed first attempts, {load.lost} lost with one client retry")
    assert at_kill > 0 and load.requests > at_kill
    assert victim not in after and len(after) == 2 and running_replicas() == 2
    assert load.lost == 0
    with httpx.Client(base_url=url, headers={"X-API-Key": key}) as client:
        assert client.get("/healthz").json()["status"] == "ok"


def register_unscorable(cfg, events, snapshot_id):
    """A champion whose embedding holds 3 items while its vocabulary holds 20: scoring raises IndexError."""
    torch.manual_seed(0)
    vocab = build_vocabulary(events, cfg.features.event_weights)
    config = SASRecConfig.from_app(cfg, 3)
    bundle = ModelBundle(
        model_kind="sasrec", model_config=config.to_dict(), item_ids=vocab.item_ids,
        item_popularity=vocab.item_popularity, state_dict=SASRec(config).state_dict(),
        item_categories=vocab.item_categories, max_seq_len=cfg.features.max_seq_len, metrics={"hr@10": 0.3},
    )
    return log_and_register(cfg, bundle, params={"source": "reliability"}, metrics={"hr@10": 0.3},
                            history=[], snapshot_id=snapshot_id, alias="champion")


def test_a_failing_model_is_answered_by_the_fallback_flagged_and_health_degraded(serving):
    cfg, url, key, events, snapshot_id = serving
    broken = register_unscorable(cfg, events, snapshot_id)
    with httpx.Client(base_url=url, timeout=30, headers={"X-API-Key": key}) as client:
        deadline = time.perf_counter() + 45
        versions: set = set()
        while time.perf_counter() < deadline:  # both replicas follow the alias
            versions = {client.get("/healthz").json()["model_version"] for _ in range(8)}
            if versions == {broken.version}:
                break
            time.sleep(0.5)
        assert versions == {broken.version}
        answers = [client.get(f"/recommendations/user{u % N_USERS}", params={"k": 5}) for u in range(40)]
        assert {a.status_code for a in answers} == {200}
        bodies = [a.json() for a in answers]
        assert all(b["fallback"] is True and b["fallback_reason"] == "model_error" for b in bodies)
        assert all(len(b["items"]) == 5 and {i["reason"] for i in b["items"]} == {"popular now"} for b in bodies)
        health = [client.get("/healthz").json() for _ in range(8)]
        report_figure("champion whose model raises (IndexError in forward)",
                      f"{sum(b['fallback_reason'] == 'model_error' for b in bodies)}/{len(bodies)} answers from "
                      f"popularity flagged model_error; /healthz {sorted({h['status'] for h in health})}",
                      f"{sum(a.status_code != 200 for a in answers)} requests")
        assert {h["status"] for h in health} == {"degraded"}
        assert {h["model_loaded"] for h in health} == {True}
