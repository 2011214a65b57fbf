"""The metric catalogue: unique, valid Prometheus names and tags; helpers record what they say."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aisys.monitoring import metrics
from aisys.monitoring.metrics import CATALOGUE, InMemoryMetricsSink, MetricSpec

REPO = Path(__file__).resolve().parents[2]
METRIC_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")  # ':' is reserved for recording rules (and Ray refuses it)
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
SERVE_RESERVED_TAGS = {"deployment", "replica", "application"}  # Ray Serve adds these itself


@pytest.fixture
def sink():
    memory = InMemoryMetricsSink()
    metrics.set_metrics_sink(memory)
    yield memory
    metrics.set_metrics_sink(None)


def test_names_and_exported_series_are_unique_and_valid():
    names = [spec.name for spec in CATALOGUE]
    assert len(names) == len(set(names))
    exported = [name for spec in CATALOGUE for name in spec.exported_names()]
    assert len(exported) == len(set(exported)), "a histogram's _sum/_count/_bucket collides with another metric"
    for spec in CATALOGUE:
        assert METRIC_NAME.match(spec.name), spec.name
        assert spec.name.startswith("aisys_"), f"{spec.name}: our series share one prefix"
        assert spec.description.strip(), f"{spec.name} has no help text"


def test_tags_are_valid_unique_and_not_reserved_by_serve():
    for spec in CATALOGUE:
        assert len(spec.tag_keys) == len(set(spec.tag_keys)), spec.name
        for tag in spec.tag_keys:
            assert LABEL_NAME.match(tag) and not tag.startswith("__"), f"{spec.name}: tag {tag!r}"
            assert tag not in SERVE_RESERVED_TAGS, f"{spec.name}: tag {tag!r} is reserved by Ray Serve"


def test_kinds_follow_prometheus_conventions_and_ray_histogram_rules():
    for spec in CATALOGUE:
        assert spec.kind in ("counter", "gauge", "histogram"), spec.name
        if spec.kind == "counter":
            # Ray exports a counter named *_total once; any other name also gets a deprecated gauge twin.
            assert spec.name.endswith("_total"), spec.name
        else:
            assert not spec.name.endswith("_total"), spec.name
        if spec.kind == "histogram":
            bounds = spec.boundaries
            assert bounds and all(b > 0 for b in bounds), f"{spec.name}: Ray needs positive boundaries"
            assert list(bounds) == sorted(set(bounds)), f"{spec.name}: boundaries must increase"
        else:
            assert spec.boundaries == ()


def test_the_catalogue_covers_what_the_issue_asks_for():
    by_kind_and_tags = {(s.kind, s.tag_keys): s.name for s in CATALOGUE}
    assert ("counter", ("route", "method", "status")) in by_kind_and_tags
    assert ("histogram", ("route", "method", "status")) in by_kind_and_tags
    tags = {s.name: set(s.tag_keys) for s in CATALOGUE}
    assert {"reason"} in tags.values()  # fallbacks
    assert {"scope"} in tags.values()  # rate limits
    assert {"feature", "statistic"} in tags.values()  # drift
    assert {"model_version", "arm"} <= tags["aisys_online_hit_rate"]
    assert {"model_version", "arm"} <= tags["aisys_model_info"]
    assert tags["aisys_retrain_decisions_total"] == {"decision"}


def test_helpers_record_with_the_declared_tags(sink):
    metrics.record_request("/recommendations", "get", 200, 0.012)
    metrics.record_request("/recommendations", "GET", 200, 0.020)
    metrics.record_fallback("timeout")
    metrics.record_cache_lookup(True)
    metrics.record_cache_lookup(False)
    metrics.record_rate_limited("storefront")
    metrics.set_model_info("aisys-recommender", "3", "champion")
    metrics.set_online_hit_rate("3", "champion", 0.42, 250)
    metrics.set_drift_statistic("price", "psi", 0.31)
    metrics.record_retrain_decision("blocked")
    assert sink.value("aisys_http_requests_total", route="/recommendations", method="GET", status="200") == 2
    latencies = sink.observations[sink._key("aisys_http_request_duration_seconds",
                                            {"route": "/recommendations", "method": "GET", "status": "200"})]
    assert latencies == [0.012, 0.020]
    assert sink.value("aisys_fallbacks_total", reason="timeout") == 1
    assert sink.value("aisys_cache_lookups_total", result="hit") == 1
    assert sink.value("aisys_cache_lookups_total", result="miss") == 1
    assert sink.value("aisys_rate_limited_total", scope="storefront") == 1
    assert sink.value("aisys_model_info", model_name="aisys-recommender", model_version="3", arm="champion") == 1
    assert sink.value("aisys_online_hit_rate", model_version="3", arm="champion") == 0.42
    assert sink.value("aisys_online_judged_lists", model_version="3", arm="champion") == 250
    assert sink.value("aisys_drift_statistic", feature="price", statistic="psi") == 0.31
    assert sink.value("aisys_retrain_decisions_total", decision="blocked") == 1


def test_scores_are_recorded_through_the_logistic_function(sink):
    metrics.record_scores([-50.0, 0.0, 3.0, float("-inf")], "3", "challenger")
    observed = sink.observations[sink._key("aisys_recommendation_score", {"model_version": "3", "arm": "challenger"})]
    assert len(observed) == 3  # the -inf of a masked item is not a score
    assert observed[1] == 0.5 and 0 < observed[0] < 1e-6 and 0.95 < observed[2] < 0.96
    assert observed == sorted(observed)  # monotone: the shape of the distribution is kept


def test_the_in_memory_sink_refuses_undeclared_metrics_and_wrong_tags(sink):
    with pytest.raises(KeyError, match="not declared"):
        sink.inc("aisys_unknown_total", 1, {})
    with pytest.raises(ValueError, match="takes tags"):
        sink.inc("aisys_fallbacks_total", 1, {"why": "x"})
    with pytest.raises(TypeError, match="gauge"):
        sink.inc("aisys_online_hit_rate", 1, {"model_version": "1", "arm": "champion"})
    with pytest.raises(ValueError, match="retrain decision"):
        metrics.record_retrain_decision("maybe")


def test_without_ray_the_helpers_are_silent_no_ops():
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        pytest.skip("Ray is up in this test process (run with the Ray tests)")
    metrics.set_metrics_sink(None)
    assert isinstance(metrics.metrics_sink(), metrics.NullMetricsSink)
    metrics.record_request("/healthz", "GET", 200, 0.001)  # nothing to assert but that it costs nothing


def test_exported_names_follow_rays_prefix_and_histogram_suffixes():
    spec = MetricSpec("aisys_x_seconds", "histogram", "x", ("a",), (0.1, 1.0))
    assert spec.exported_names() == ("ray_aisys_x_seconds_bucket", "ray_aisys_x_seconds_sum", "ray_aisys_x_seconds_count")
    assert MetricSpec("aisys_y_total", "counter", "y").exported_names() == ("ray_aisys_y_total",)


def test_the_pure_monitoring_modules_import_neither_ray_nor_mlflow_nor_evidently(tmp_path):
    modules = ["aisys.monitoring.metrics", "aisys.monitoring.drift", "aisys.monitoring.profile",
               "aisys.monitoring.online_quality", "aisys.monitoring.audit", "aisys.monitoring.findings", "aisys.monitoring.evidently_report",
               "aisys.monitoring.monitor_actor"]
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow', 'evidently'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_grafana_dashboard_uses_only_and_all_catalogue_series():
    dashboard = json.loads((REPO / "monitoring" / "grafana" / "aisys.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bray_aisys_\w+", expr)}
    exported = {name for spec in CATALOGUE for name in spec.exported_names()}
    assert used <= exported, f"dashboard series not in the catalogue: {sorted(used - exported)}"
    unshown = [s.name for s in CATALOGUE if not set(s.exported_names()) & used]
    assert unshown == [], f"catalogue metrics without a panel: {unshown}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
