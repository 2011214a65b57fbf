"""The drift monitor actor end to end on a small simulated shift: stats, gauges, findings, report; the loop's
decider decides on the findings and audits every decision."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from aisys.config import MonitorConfig, SimulatorConfig
from aisys.data.simulator import drift_midpoint, simulate_events
from aisys.loop.decider import RetrainDecider
from aisys.monitoring.audit import InMemoryAuditLog, ParquetAuditLog
from aisys.monitoring.metrics import InMemoryMetricsSink
from aisys.monitoring.monitor_actor import DriftMonitor, drop_monitor, get_or_create
from aisys.monitoring.profile import build_profile
from tests.prometheus import PROMETHEUS, immediate_rules, prometheus_alerts, prometheus_query, running_prometheus

pytestmark = pytest.mark.ray

WINDOW, EVERY = 1000, 250
SIM = dict(n_users=300, n_items=200, n_sessions=3000, days=10, seed=11,
           taste_shift=1.0, new_items=30, price_change=0.5)
FIELDS = ["user_id", "item_id", "category", "price", "event_type"]


def rows(frame: pd.DataFrame) -> list[dict]:
    return frame[FIELDS].to_dict("records")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def series_values(body: str, name: str, **labels: str) -> list[float]:
    """The values of every ``name`` sample whose labels include ``labels`` (one per worker process)."""
    values = []
    for line in body.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            values.append(float(line.rsplit(" ", 1)[1]))
    return values


@pytest.fixture
def monitor_config(small_config):
    small_config.monitor = MonitorConfig(
        window_events=WINDOW, check_every_events=EVERY, psi_threshold=0.2, drift_consecutive_checks=2,
        hit_rate_horizon_events=5, hit_rate_min_lists=20, hit_rate_window_lists=200,
        min_new_events=1_000_000, cooldown_s=3600, max_retrains_per_day=4, report_every_s=1e6,
    )
    yield small_config
    drop_monitor(small_config)


def test_monitor_sees_a_shift_exports_gauges_and_reports_and_the_loop_decides(ray_session, monitor_config, monkeypatch):
    cfg = monitor_config
    sim = SimulatorConfig(**SIM)
    events = simulate_events(sim).to_pandas()
    mid = pd.Timestamp(drift_midpoint(sim))
    before = events[events["timestamp"] < mid].reset_index(drop=True)
    after = events[events["timestamp"] >= mid].reset_index(drop=True)
    profile = build_profile(before, snapshot_id="snap-test", activity_window_events=WINDOW)

    monitor = get_or_create(cfg, profile, before.tail(WINDOW).reset_index(drop=True))
    same = get_or_create(cfg)  # by name: the same actor, whatever the arguments
    ray = ray_session
    decider = RetrainDecider.from_config(cfg)  # the loop's side: the audit table in the lake
    sink = InMemoryMetricsSink()
    monkeypatch.setattr("aisys.monitoring.metrics._sink_override", sink)  # the decision counter is the loop's

    # Calm: the training period's own tail. Four checks, no drift, no retrain.
    calm = ray.get(monitor.observe_events.remote(rows(before.tail(WINDOW))))
    assert [f.check for f in calm["checks"]] == [1, 2, 3, 4]
    assert ray.get(monitor.take_findings.remote()) == calm["checks"]  # the same findings wait for the loop
    assert [d.outcome for d in decider.decide_all(calm["checks"])] == ["none"] * (WINDOW // EVERY)
    status = ray.get(same.status.remote())
    assert status["events_seen"] == WINDOW and status["drift_streak"] == 0
    assert max(s["psi"] for s in status["latest_stats"].values()) < 0.2
    assert set(status["latest_stats"]) == {"category", "item_popularity", "price", "user_activity", "user_taste"}

    # Served lists before the shift: 30 users get their next item (hits), 10 get nothing they will touch.
    upcoming = after.drop_duplicates("user_id").head(40)
    lists = [
        {"user_id": u, "items": [i] if n < 30 else ["no-such-item"], "scores": [1.0], "model_version": "1",
         "arm": "champion" if n < 30 else "challenger"}
        for n, (u, i) in enumerate(zip(upcoming["user_id"], upcoming["item_id"]))
    ]
    assert ray.get(monitor.observe_recommendation_lists.remote(lists)) == 40

    # The shift: drift on the second check in a row triggers a retrain, then the cooldown blocks.
    for start in range(0, 2 * WINDOW, EVERY):
        ray.get(monitor.observe_events.remote(rows(after.iloc[start : start + EVERY])))
    outcomes = [d.outcome for d in decider.decide_all(ray.get(monitor.take_findings.remote()))]
    assert len(outcomes) == 2 * WINDOW // EVERY and ray.get(monitor.take_findings.remote()) == []
    first_retrain = outcomes.index("retrain")
    assert outcomes[:first_retrain] == ["none"] * first_retrain
    assert set(outcomes[first_retrain + 1 :]) == {"blocked"}

    request = decider.take_request()
    assert "drift" in request["triggers"] and request["retrain"]
    assert decider.take_request() is None  # taken once

    status = ray.get(monitor.status.remote())
    stats = status["latest_stats"]
    assert stats["user_taste"]["psi"] > 0.5  # every user's taste was redrawn
    assert stats["item_popularity"]["psi"] > 0.2  # new hit items
    assert stats["price"]["psi"] > 0.2  # +50% prices
    assert status["drift_streak"] >= 2 and status["findings"][-1]["check"] == status["checks"]
    assert "decisions" not in status  # the monitor reports; the decisions are the loop's
    assert decider.decisions[-1].outcome == "blocked"
    assert any(b.startswith("cooldown") for b in decider.decisions[-1].blocked_by)
    assert sink.value("aisys_retrain_decisions_total", decision="retrain") == 1

    champion = next(r for r in status["hit_rates"] if r["arm"] == "champion")
    challenger = next(r for r in status["hit_rates"] if r["arm"] == "challenger")
    assert (champion["model_version"], champion["hits"], champion["judged"]) == ("1", 30, 30)
    assert challenger["hits"] == 0 and challenger["judged"] + status["open_lists"] == 10

    # The report written when drift was first suspected, then one on request over the shifted window.
    first = status["reports"][0]
    assert first["reason"] == "drift suspected" and Path(first["path"]).is_file()
    assert first["path"].startswith(str(Path(cfg.paths.lake_uri) / "reports" / "drift"))
    report = ray.get(monitor.write_report.remote())
    assert {"price", "item_popularity"} <= set(report["drifted_columns"])
    assert status["errors"] == []

    # Every decision is in the audit table in the lake.
    audit = ParquetAuditLog(cfg.paths.lake_uri).read()
    assert audit["outcome"].tolist() == ["none"] * (WINDOW // EVERY) + outcomes

    # The gauges reach Ray's metrics endpoint (exported every few seconds).
    port = ray._private.worker.global_worker.node.metrics_export_port
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        body = scrape(port)
        taste = series_values(body, "ray_aisys_drift_statistic", feature="user_taste", statistic="psi")
        hit_rate = series_values(body, "ray_aisys_online_hit_rate", model_version="1", arm="champion")
        if any(v == pytest.approx(stats["user_taste"]["psi"]) for v in taste) and 1.0 in hit_rate:
            break
        time.sleep(1)
    assert any(v == pytest.approx(stats["user_taste"]["psi"]) for v in taste)
    assert 1.0 in hit_rate


@pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's prometheus (scripts/install-system-deps.sh)")
def test_a_real_prometheus_scrapes_the_monitor_gauges(ray_session, monitor_config, tmp_path):
    cfg = monitor_config
    sim = SimulatorConfig(**{**SIM, "n_sessions": 600})
    events = simulate_events(sim).to_pandas()
    monitor = get_or_create(cfg, build_profile(events.head(1500), activity_window_events=WINDOW))
    ray_session.get(monitor.observe_events.remote(rows(events.iloc[1500 : 1500 + EVERY])))
    expected = ray_session.get(monitor.status.remote())["latest_stats"]["price"]["psi"]

    assert expected > cfg.monitor.psi_threshold  # the price shift is drift: the shipped alert must fire on it
    metrics_port = ray_session._private.worker.global_worker.node.metrics_export_port
    rules = immediate_rules(Path(__file__).resolve().parents[2] / "monitoring" / "alerts.yml", tmp_path)
    with running_prometheus(metrics_port, tmp_path, rule_files=(rules,)) as web_port:
        query = 'ray_aisys_drift_statistic{feature="price",statistic="psi"}'
        # One series per worker process: an earlier test's monitor may still be listed until its TTL,
        # so wait for this monitor's value rather than for any series.
        deadline, values = time.monotonic() + 45, []
        while time.monotonic() < deadline and not any(v == pytest.approx(expected) for v in values):
            time.sleep(1)
            try:
                values = [float(series["value"][1]) for series in prometheus_query(web_port, query)]
            except OSError:
                continue  # not listening yet
        assert any(v == pytest.approx(expected) for v in values), f"Prometheus returned {values}, not {expected}"
        # The shipped AisysDataDrift rule (its `for:` dropped) fires on the monitor's price PSI.
        deadline, firing = time.monotonic() + 20, []
        while time.monotonic() < deadline and not firing:
            firing = [a for a in prometheus_alerts(web_port) if a["labels"]["alertname"] == "AisysDataDrift"
                      and a["labels"].get("feature") == "price" and a["state"] == "firing"]
            time.sleep(0.5)
        assert firing, f"AisysDataDrift did not fire: {prometheus_alerts(web_port)}"


def test_a_hit_rate_drop_triggers_through_the_monitor_and_the_cooldown_holds_the_next(small_config):
    # In process (DriftMonitor and RetrainDecider are plain classes): no reference profile, so only online
    # quality can trigger.
    small_config.monitor = MonitorConfig(
        window_events=100, check_every_events=20, hit_rate_horizon_events=1, hit_rate_min_lists=20,
        hit_rate_window_lists=20, hit_rate_drop=0.2, cooldown_s=3600, report_every_s=1e9,
    )
    now = [datetime(2026, 3, 1, tzinfo=timezone.utc)]
    monitor = DriftMonitor(small_config, clock=lambda: now[0], link_reports_to_mlflow=False)
    decider = RetrainDecider(small_config.monitor, InMemoryAuditLog())

    def serve_and_click(n_rounds: int, hit_every: int | None) -> list[str]:
        outcomes = []
        for n in range(n_rounds):
            monitor.observe_recommendations(f"u{n}", [f"i{n}"], [0.5], model_version="7")
            hit = hit_every is not None and n % hit_every == 0
            found = monitor.observe_events([{"user_id": f"u{n}", "item_id": f"i{n}" if hit else "other"}])["checks"]
            outcomes += [d.outcome for d in decider.decide_all(found)]
        return outcomes

    assert serve_and_click(40, hit_every=2) == ["none", "none"]  # baseline 0.5 over the first 20 lists
    assert monitor.status()["hit_rates"][0]["baseline_hit_rate"] == 0.5
    assert serve_and_click(20, hit_every=None) == ["retrain"]  # the last 20 lists: 0 hits
    assert decider.take_request()["triggers"] == ["hit_rate_drop"]
    assert serve_and_click(20, hit_every=None) == ["blocked"]  # cooldown
    now[0] += timedelta(hours=1)
    assert serve_and_click(20, hit_every=None) == ["retrain"]
    status = monitor.status()
    assert status["model_version"] is None and decider.decisions[-1].model_version == "7"
    assert status["findings"][-1]["model_version"] == "7" and status["findings"][-1]["judged_lists"] == 20
    assert status["errors"] == ["no reference profile yet: the lake at "
                                f"{small_config.paths.lake_uri} has no snapshot to profile: ingest first"]
    assert decider.audit_log()["outcome"].tolist() == ["none", "none", "retrain", "blocked", "retrain"]
