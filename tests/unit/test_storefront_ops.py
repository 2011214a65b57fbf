"""The operator view's data: offline metrics, decisions, drift over time, traffic, links (no Ray, no MLflow)."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import unquote

import pytest

from aisys.loop.policy import PolicyState, RetrainPolicy
from aisys.monitoring.audit import ParquetAuditLog
from aisys.serving import ops_view as provider
from aisys.storefront.opsdata import (
    decision_rows, drift_chart_svg, drift_series, drift_summary, link_row, metric_key, offline_metrics,
)
from aisys.loadgen.stats import percentile
from aisys.storefront.traffic import RequestWindow

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def write_decisions(cfg, psis: list[float]) -> None:
    """Real policy decisions, one per drift check, into the lake's real audit log."""
    policy = RetrainPolicy(cfg.monitor, ParquetAuditLog(cfg.paths.lake_uri))
    history: list[dict] = []
    for n, psi in enumerate(psis):
        history.append({"item_popularity": psi, "category_mix": psi / 2})
        policy.evaluate(PolicyState(drift_history=list(history), model_version="1", new_events=100 * n),
                        T0 + timedelta(hours=n))


def test_offline_metrics_prefer_the_registry_run_and_split_the_baseline():
    run = {"test_ndcg_at_10": 0.31, "test_hr_at_10": 0.52, "baseline_ndcg_at_10": 0.12, "loss": 1.5}
    out = offline_metrics({"ndcg@10": 0.2, "loss": 2.0}, run)
    assert out["ndcg@10"] == 0.31 and out["hr@10"] == 0.52 and out["baseline"] == {"ndcg@10": 0.12}
    assert out["loss"] == 2.0  # training loss is not a test metric: the bundle's stays
    assert offline_metrics({"hr@10": 0.4}, None) == {"hr@10": 0.4}
    assert metric_key("test_mrr_at_10") == "mrr@10"


def test_decisions_and_drift_series_come_from_the_audit_log(small_config):
    write_decisions(small_config, [0.05, 0.25, 0.4, 0.45])
    records = provider._audit_records(small_config)
    rows = decision_rows(records, limit=3)
    assert len(rows) == 3 and rows[0]["time"] > rows[-1]["time"]  # newest first
    assert any(r["decision"] in ("retrain", "blocked") for r in rows) and all(r["reasons"] for r in rows)
    series = drift_series(records)
    assert [round(p["psi"]["item_popularity"], 2) for p in series] == [0.05, 0.25, 0.4, 0.45]
    assert series[0]["at"] < series[-1]["at"]


def test_drift_chart_is_self_contained_svg_with_the_threshold():
    series = [{"at": f"2026-12-0{n}T00:00", "psi": {"item_popularity": v, "<b>": v / 2}}
              for n, v in enumerate([0.1, 0.3, 0.5], start=1)]
    svg = drift_chart_svg(series, 0.2)
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and "threshold 0.2" in svg
    assert "<b>" not in svg and "script" not in svg and "href" not in svg
    assert drift_summary(series, 0.2).endswith("over the threshold: <b>, item_popularity")  # plain text, shown as text
    assert drift_summary([], 0.2) == "no drift check yet"
    assert drift_chart_svg(series[:1], 0.2).count("<circle") == 2  # one point still draws


def test_request_window_rate_and_latency():
    now = [100.0]
    window = RequestWindow(window_s=10, clock=lambda: now[0])
    for latency in (5, 10, 15, 20):
        window.record(latency, 200)
    window.record(40, 503)
    now[0] = 105.0
    summary = window.summary()
    assert summary["requests"] == 5 and summary["rate_per_s"] == pytest.approx(1.0)  # 5 in 5 s of uptime
    assert summary["p50_ms"] == 15 and summary["p95_ms"] == pytest.approx(36.0)  # interpolated, as numpy
    assert summary["error_share"] == pytest.approx(0.2)
    now[0] = 120.0
    assert window.summary()["requests"] == 0  # aged out
    assert percentile([], 50) is None


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_links_are_links_only_when_the_ui_answers(small_config):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    closed = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    closed_port = closed.server_address[1]
    closed.server_close()  # a port nothing listens on
    try:
        serve = small_config.serve.model_copy(update={
            "ray_dashboard_url": f"http://127.0.0.1:{server.server_address[1]}/",
            "mlflow_ui_url": f"http://127.0.0.1:{closed_port}/", "grafana_url": None})
        cfg = small_config.model_copy(update={"serve": serve})
        rows = {r["name"]: r for r in asyncio.run(provider.operator_links(cfg, None))}
    finally:
        server.shutdown()
    assert rows["Ray dashboard"]["ok"] and rows["Ray dashboard"]["href"] == serve.ray_dashboard_url
    assert rows["MLflow UI"]["href"] is None and "not reachable" in rows["MLflow UI"]["reason"]
    assert rows["Grafana"]["reason"] == "not configured: set serve.grafana_url"
    assert "no report yet" in rows["Latest drift report (Evidently)"]["reason"]
    assert link_row("X", "http://x", True, None, "s")["href"] == "http://x"


def test_overview_fills_every_section_from_real_sources(small_config, monkeypatch):
    write_decisions(small_config, [0.1, 0.3])
    model = SimpleNamespace(info=SimpleNamespace(model_dump=lambda mode: {
        "version": "4", "run_id": "r1", "snapshot_id": "s1", "metrics": {"ndcg@10": 0.2}}))
    service = SimpleNamespace(models={"champion": model},
                              health=lambda: SimpleNamespace(model_dump=lambda mode: {"status": "ok"}))

    async def run_metrics(cfg, run_id):
        return {"test_ndcg_at_10": 0.33, "test_hr_at_10": 0.5} if run_id == "r1" else {}

    monkeypatch.setattr(provider, "_run_metrics", run_metrics)
    data = asyncio.run(provider.overview(small_config, service))
    assert data["models"]["champion"]["metrics"]["ndcg@10"] == 0.33 and data["models"]["challenger"] is None
    assert len(data["decisions"]) == 2 and len(data["drift"]["series"]) == 2
    assert unquote(data["drift"]["chart"]).startswith("data:image/svg+xml;charset=utf-8,<svg")
    assert data["drift"]["stats"]  # the latest check's PSI when no monitor is running
    assert {r["name"] for r in data["links"]} >= {"Ray dashboard", "MLflow UI", "Grafana"}
