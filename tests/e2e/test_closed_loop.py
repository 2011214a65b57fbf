"""The closed loop end to end: a shift streamed through the live HTTP API -> the monitor detects it -> the
controller ingests what was collected and retrains -> the gate promotes -> the served version changes under
load with zero failed requests.

Real parts throughout: Ray Serve with the gateway (a dev key), the HTTP collector's files, Ray Data ingest,
Ray Train, MLflow on SQLite, the gate, the monitor actor fed by the replica's own forwarder
(``aisys.serving.telemetry``, ``monitor.enabled``): the harness only posts events and reads recommendations.
"""

import threading
import time

import httpx
import pyarrow as pa
import pytest

from aisys.config import MonitorConfig, SimulatorConfig
from aisys.data.simulator import drift_midpoint, simulate_events
from aisys.gateway import ensure_dev_keys
from aisys.loop.controller import RetrainController
from aisys.monitoring.monitor_actor import drop_monitor, get_or_create
from aisys.monitoring.profile import build_profile
from aisys.registry.mlflow_registry import get_model_info
from aisys.serving.app import start_serving, stop_serving
from tests.e2e.conftest import free_port
from tests.load import VersionLoad
from tests.ray.test_retrain import SIM, commit, register_weak_champion

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.slow]

BATCH = 50  # events posted between two looks at the monitor
MAX_AFTER_EVENTS = 1500  # stop streaming the shifted traffic here even without detection
EVENT_FIELDS = ("event_id", "user_id", "item_id", "event_type", "category", "price")


def split_at_shift(sim: SimulatorConfig) -> tuple[pa.Table, pa.Table]:
    events = simulate_events(sim)
    mid = drift_midpoint(sim)
    before = [t < mid for t in events.column("timestamp").to_pylist()]
    return events.filter(pa.array(before)), events.filter(pa.array([not b for b in before]))


def as_posts(table: pa.Table) -> list[dict]:
    rows = table.select(list(EVENT_FIELDS) + ["timestamp"]).to_pylist()
    return [{**{k: r[k] for k in EVENT_FIELDS}, "timestamp": r["timestamp"].isoformat()} for r in rows]


@pytest.fixture
def loop_config(small_config):
    cfg = small_config
    cfg.serve.port = free_port()
    cfg.online.follow_alias_every_s = 0.5
    cfg.online.session_store = "memory"  # one replica: no shared session actor needed
    cfg.online.latency_budget_ms = 5000  # a busy 2-core box must not turn answers into fallbacks
    cfg.gateway.rate_limit_backend = "memory"
    cfg.gateway.rate_limit_per_s = 5000.0  # the harness posts as fast as it can with one key
    cfg.gateway.rate_limit_burst = 5000
    cfg.gateway.cache_ttl_s = 0  # a cached list would hide the swap
    cfg.serve.access_log = False
    cfg.train.epochs = 4
    cfg.train.lr = 5e-3
    # The deliberately weak champion recommends near-random, unpopular items, so any trained candidate looks
    # "popularity-biased" next to it; that guardrail has its own tests (tests/unit/test_gate.py).
    cfg.gate.max_popularity_ratio = 5.0
    cfg.monitor = MonitorConfig(
        window_events=300, check_every_events=100, psi_threshold=0.2, drift_consecutive_checks=2,
        min_new_events=1_000_000, cooldown_s=3600, max_retrains_per_day=4,
        report_on_drift=False, report_every_s=1e6,  # Evidently has its own tests; here it would cost ~10 s
    )
    yield cfg
    drop_monitor(cfg)


def test_shift_is_detected_retrained_promoted_and_served_without_failures(ray_session, loop_config):
    cfg = loop_config
    ray = ray_session
    sim = SimulatorConfig(**SIM)
    before, after = split_at_shift(sim)
    first = commit(cfg, before)
    v1 = register_weak_champion(cfg, before, first)
    monitor = get_or_create(cfg, build_profile(before.to_pandas(), snapshot_id=first, model_version=v1,
                                               activity_window_events=cfg.monitor.window_events))
    key = ensure_dev_keys(cfg)["dev-admin"]
    controller = RetrainController(cfg, submit="inline", monitor=monitor)
    loop = threading.Thread(target=controller.run, kwargs={"poll_s": 0.5}, daemon=True)

    url = start_serving(cfg)
    readers = VersionLoad(url, key, sorted(set(before.column("user_id").to_pylist()))[:40], rps=15.0,
                          clients=3, stride=3)
    try:
        loop.start()
        readers.start()
        posts = as_posts(after)[:MAX_AFTER_EVENTS]
        onset = time.monotonic()
        detected_after = detected_at = posted_at_detection = None
        every = cfg.monitor.check_every_events
        with httpx.Client(base_url=url, timeout=30, headers={"X-API-Key": key}) as client:
            assert client.get("/model").json()["version"] == v1
            for start in range(0, len(posts) + 20 * BATCH, BATCH):
                for event in posts[start:start + BATCH]:
                    resp = client.post("/events", json=event)
                    assert resp.status_code == 202, resp.text
                if start >= len(posts):
                    time.sleep(0.5)  # all posted: give the replica's forwarder (<= 1 s) time to deliver
                # The replica forwards accepted events to the monitor in the background; it checks every
                # `every` events and reports its findings, on which the controller's decider decides (one
                # decision per check). The first "retrain" decision is the detection.
                outcomes = controller.decider.outcomes()
                if detected_after is None and "retrain" in outcomes:
                    detected_after = (outcomes.index("retrain") + 1) * every  # decisions start at check 1
                    detected_at, posted_at_detection = time.monotonic(), min(start + BATCH, len(posts))
                if detected_after is not None and start + BATCH >= posted_at_detection + 2 * BATCH:
                    break  # a little traffic after detection, then let the loop work
        assert detected_after is not None, ray.get(monitor.status.remote())["latest_stats"]

        # The controller takes the request, ingests the collected events, retrains, the gate promotes,
        # and the replica follows the alias.
        deadline = time.monotonic() + 120
        while not (controller.records and readers.latest_versions() - {v1}):
            assert time.monotonic() < deadline, (controller.records, readers.latest_versions())
            if controller.records and (controller.records[0].error or not controller.records[0].promoted):
                break  # failed or refused: the assertions below say why
            time.sleep(0.2)
        record = controller.records[0]
        assert record.error is None, record.error
        outcome = record.outcome
        assert outcome["promoted"], outcome["reasons"]
        v2 = outcome["new_version"]
        served_at = time.monotonic()
        assert record.request["triggers"] == ["drift"]
        assert record.ingested_rows >= detected_after  # the drifted traffic reached the lake before training
        assert outcome["snapshot_id"] == record.ingested_snapshot
        assert get_model_info(cfg, "champion")["version"] == v2
        deadline = time.monotonic() + 30
        while readers.latest_versions() != {v2}:
            assert time.monotonic() < deadline, readers.latest_versions()
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        readers.stop()
        controller.stop()
        loop.join(timeout=60)
        status = ray.get(monitor.status.remote())  # before stop_serving(cfg), which removes the monitor too
        stop_serving(cfg)

    results = readers.all()
    assert len(results) > 50
    assert [r for r in results if r[0] != 200] == []  # zero failed requests, through the swap included
    for res in readers.results:  # each client saw v1 then v2, never back
        versions = [v for _, v in res]
        assert versions == sorted(versions, key=lambda v: v == v2) and versions[-1] == v2
    assert status["events_seen"] > 0 and status["hit_rates"]  # the replica fed events and served lists
    assert status["model_version"] == v2 and status["snapshot_id"] == outcome["snapshot_id"]  # new reference
    print(f"\nclosed loop: detected after {detected_after} shifted events; served v{v2} "
          f"{served_at - detected_at:.1f} s after detection ({served_at - onset:.1f} s after onset); "
          f"retrain {record.seconds}; {len(results)} reads, 0 failed")
