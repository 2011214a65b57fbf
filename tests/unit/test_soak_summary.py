"""The soak benchmark's arithmetic: which windows are compared, growth per process and in total, statuses."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

MB = 1024 * 1024


@pytest.fixture(scope="module")
def soak():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("benchmarks_soak", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    had_ray = "ray" in sys.modules
    spec.loader.exec_module(module)
    assert ("ray" in sys.modules) == had_ray  # the benchmark imports Ray only when it runs
    return module


def sample(t: float, **rss_mb: float) -> dict:
    return {"t": t, "rss": {k: v * MB for k, v in rss_mb.items()}}


def test_windows_of_a_long_run_start_after_warmup_and_end_at_the_end(soak):
    assert soak.growth_windows(1800, 120, 120) == ((120, 240), (1680, 1800))


def test_windows_of_a_short_run_are_scaled_and_do_not_overlap(soak):
    early, late = soak.growth_windows(180, 120, 120)
    assert early == (36.0, 81.0) and late == (135.0, 180.0)
    assert early[1] < late[0]


@pytest.mark.parametrize("bad", [(0, 10, 10), (100, -1, 10), (100, 10, 0)])
def test_windows_refuse_impossible_settings(soak, bad):
    with pytest.raises(ValueError):
        soak.growth_windows(*bad)


def test_growth_compares_window_means_per_process_and_in_total(soak):
    samples = [
        sample(0, replica=500, proxy=100),      # warm-up: ignored
        sample(10, replica=200, proxy=100),
        sample(20, replica=220, proxy=100),     # early mean: replica 210, proxy 100, total 310
        sample(50, replica=300, proxy=100),     # between the windows: ignored
        sample(80, replica=220, proxy=104),
        sample(90, replica=240, proxy=106),     # late mean: replica 230, proxy 105, total 335
    ]
    growth = soak.memory_growth(samples, (10, 20), (80, 90), max_growth=0.10)
    assert growth["replica"] == {"start_mb": 210.0, "end_mb": 230.0, "growth_pct": 9.52, "verdict": "PASS"}
    assert growth["proxy"]["growth_pct"] == 5.0 and growth["proxy"]["verdict"] == "PASS"
    assert growth["total"]["start_mb"] == 310.0 and growth["total"]["end_mb"] == 335.0
    assert growth["total"]["growth_pct"] == pytest.approx(100 * (335 / 310 - 1), abs=0.01)


def test_growth_at_or_over_the_limit_fails_and_a_missing_process_is_not_judged(soak):
    samples = [sample(10, replica=100, monitor=50), sample(90, replica=110)]
    growth = soak.memory_growth(samples, (0, 20), (80, 100), max_growth=0.10)
    assert growth["replica"]["verdict"] == "FAIL"  # exactly +10% is not "under 10%"
    assert growth["monitor"]["verdict"] == "n/a" and growth["monitor"]["end_mb"] is None
    assert growth["total"]["growth_pct"] == pytest.approx(100 * (110 / 150 - 1), abs=0.01)


def test_percentile_interpolates_like_numpy(soak):
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert soak.percentile(values, 50) == 3.0
    assert soak.percentile(values, 99) == pytest.approx(4.96)
    assert soak.percentile([], 50) is None


@pytest.mark.parametrize("status,expected,cls", [
    (None, (200,), "transport"), (503, (200,), "5xx"), (500, (500,), "5xx"),
    (429, (200, 429), "expected"), (401, (401,), "expected"), (404, (200,), "unexpected"), (200, (202,), "unexpected"),
])
def test_status_classes_keep_server_and_transport_errors_apart_from_intended_4xx(soak, status, expected, cls):
    assert soak.classify_status(status, expected) == cls


@pytest.mark.parametrize("cmdline,role", [
    ("ray::ServeReplica:aisys:RecommenderService", "replica"),
    ("ray::ServeReplica:aisys:RecommenderService.handle_request", "replica"),
    ("ray::ServeController.listen_for_change", "serve_controller"),
    ("ray::ProxyActor", "proxy"),
    ("ray::SessionStoreActor.record", "session_store"),
    ("ray::RateLimiterActor", "rate_limiter"),
    ("ray::DriftMonitor.observe_events", "monitor"),
    ("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --raylet_socket_name=x", "raylet"),
    ("/venv/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server --gcs_server_port=1", "gcs_server"),
    ("python -u /venv/site-packages/ray/_private/log_monitor.py --session-dir=x", "log_monitor"),
    ("ray::IDLE", "idle_workers"),
    ("python something_else.py", "other_ray"),
])
def test_processes_are_labelled_by_their_ray_title(soak, cmdline, role):
    assert soak.process_role(cmdline) == role


def test_second_half_window_starts_half_way_and_is_as_long_as_the_early_one(soak):
    assert soak.second_half_window(1800, (120, 240)) == (900, 1020)
    early, late = soak.growth_windows(180, 120, 120)
    half = soak.second_half_window(180, early)
    assert half == (90, 135) and half[1] <= late[0]


@pytest.mark.parametrize("cmdline,role", [
    ("python -u /venv/site-packages/ray/autoscaler/_private/monitor.py --logs-dir=x", "autoscaler_monitor"),
    ("python /venv/site-packages/ray/dashboard/dashboard.py --host=127.0.0.1 --port=8265", "dashboard_head"),
    ("ray::DashboardAgent", "dashboard_agent"),
    ("ray::RuntimeEnvAgent", "runtime_env_agent"),
])
def test_ray_helper_processes_get_their_own_label(soak, cmdline, role):
    assert soak.process_role(cmdline) == role


def test_cpu_percent_is_the_cpu_used_between_first_and_last_sample_per_core(soak):
    samples = [{"t": 10, "rss": {}, "cpu_s": {"replica": 5.0, "proxy": 1.0}},
               {"t": 20, "rss": {}, "cpu_s": {"replica": 8.0, "proxy": 1.5}},
               {"t": 110, "rss": {}, "cpu_s": {"replica": 35.0, "proxy": 6.0, "monitor": 2.0}}]
    assert soak.cpu_percent(samples) == {"replica": 30.0, "proxy": 5.0, "monitor": 2.0}
    assert soak.cpu_percent(samples[:1]) == {}


def test_warmup_outlasts_the_drift_monitors_first_check(soak):
    assert soak.default_warmup_s(rate=50, event_share=0.2, check_every_events=500) == 120  # first check at 50 s
    assert soak.default_warmup_s(rate=15, event_share=0.2, check_every_events=500) == pytest.approx(250)
    with pytest.raises(ValueError):
        soak.default_warmup_s(rate=0, event_share=0.2, check_every_events=500)
