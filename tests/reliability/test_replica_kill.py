"""One of 2 Serve replicas killed under an open-loop 200 requests/s load behind HAProxy: 0 failed requests.

Serve's own router retries a request only before it is assigned to a replica, so requests in flight on a
killed replica fail (``test_serving_faults.py`` counts them, behind Serve's Python proxy). The edge fix is a
load balancer that replays idempotent requests on another replica: ``serve.ingress: haproxy`` (Ray's bundled
HAProxy, with ``retry-on`` widened and ``option http-buffer-request`` added by ``aisys.runtime.ingress``). Every route
is idempotent: GETs are, and a replayed ``POST /events`` carries the same ``event_id``, which the session
store applies once and ingestion keeps once.

The ingress is chosen by environment variables read when Ray starts, so the scenario runs in a subprocess with
its own private Ray (``replica_kill_driver.py``); this test never touches the suite's ``ray_session``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aisys.runtime.ingress import HAPROXY_RETRY_ON, apply_ingress_environment, ingress_environment
from tests.conftest import seed_mlflow_db
from tests.reliability.conftest import report_figure

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[2]
RATE = 200.0
# ~120 s on the busy 2-core box: MLflow registration ~25 s, Ray ~18 s, Serve ~33 s, load ~40 s.
DRIVER_TIMEOUT_S = 170


def test_each_ingress_sets_only_its_variables_and_an_operator_value_wins(tmp_path):
    assert ingress_environment("proxy") == {}
    assert ingress_environment("direct") == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    with pytest.raises(ValueError, match="serve.ingress"):
        ingress_environment("nginx")

    environ = {"RAY_SERVE_HAPROXY_RETRIES": "5"}
    applied = apply_ingress_environment("haproxy", environ)
    assert environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and environ["RAY_SERVE_HAPROXY_RETRY_ON"] == HAPROXY_RETRY_ON
    assert "empty-response" in HAPROXY_RETRY_ON.split()  # what a replica killed mid-request looks like
    assert environ["RAY_SERVE_HAPROXY_RETRIES"] == "5" and "RAY_SERVE_HAPROXY_RETRIES" not in applied
    # The shim: adds `option http-buffer-request` to the config HAProxy is started with, then runs HAProxy.
    shim = Path(environ["RAY_SERVE_HAPROXY_BINARY_PATH"])
    config = tmp_path / "haproxy.cfg"
    config.write_text("global\n    maxconn 10\ndefaults\n    mode http\n")
    fake = tmp_path / "fake-haproxy"
    fake.write_text(shim.read_text().split("exec ")[0] + f'exec cat "{config}"\n')
    fake.chmod(0o755)
    out = subprocess.run([str(fake), "-db", "-f", str(config)], capture_output=True, text=True, check=True).stdout
    assert out == "global\n    maxconn 10\ndefaults\n    option http-buffer-request\n    mode http\n"
    subprocess.run([str(fake), "-f", str(config)], check=True, capture_output=True)  # a reload adds it once
    assert config.read_text().count("http-buffer-request") == 1
    assert os.access(shim, os.X_OK) and apply_ingress_environment("proxy", {}) == {}


def run_driver(root: Path, *extra: str) -> dict:
    """Run the driver in a subprocess with a clean Ray environment; return its RESULT line as a dict."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RAY_SERVE_")}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.reliability.replica_kill_driver", "--root", str(root), *extra],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as err:
        phases = [line for line in (err.stderr or b"").decode(errors="replace").splitlines() if "[driver" in line]
        pytest.fail(f"the driver ran over {DRIVER_TIMEOUT_S}s; its phases: {phases}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.returncode, proc.stdout[-3000:], proc.stderr[-5000:])
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.serial  # 200 req/s from one client process and a 170 s budget: alone on the box
def test_a_replica_killed_at_200_requests_per_second_behind_haproxy_fails_no_request(tmp_path, mlflow_db_template):
    from aisys.config import AppConfig

    # HAProxy is the default ingress (issue 15): what a user of `aisys serve` gets is what is tested here.
    assert AppConfig().serve.ingress == "haproxy"
    # The driver's workspace is small_config_dict(tmp_path): its tracking DB starts migrated, as the suite's do.
    seed_mlflow_db(mlflow_db_template, tmp_path / "mlflow.db")
    result = run_driver(tmp_path, "--ingress", "haproxy", "--rate", str(RATE))
    haproxy = result["haproxy"]
    print(f"\nreplica kill behind HAProxy: {json.dumps({k: v for k, v in result.items() if k != 'haproxy'})}"
          f"\nHAProxy: retried {haproxy['retried']} {haproxy['retried_by_method_status']}, "
          f"not clean {haproxy['not_clean']} {haproxy['not_clean_samples'][:5]}")
    report_figure(
        f"one of 2 Serve replicas killed (ray.kill) under an open-loop {RATE:.0f} req/s load "
        f"(9 GET /recommendations : 1 POST /events), HAProxy ingress, no client retry",
        f"{result['sent']} requests at {result['achieved_rate']} req/s, p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms; replacement RUNNING after {result['replaced_s']}s; HAProxy replayed "
        f"{haproxy['retried']} requests on the other replica; 0 events applied twice",
        f"{result['failed']} failed requests {result['failed_by_outcome'] or ''}",
    )
    # A request whose response body was already streaming when its replica died cannot be replayed by any
    # proxy (HAProxy replays only requests not yet answered). With one replica left at 200 req/s on 2 cores the
    # backlog grows (p50 1-9 s seen here), so one such cut GET was seen in 1 of 4 runs (a CI run, 2026-12-04).
    # That one case is tolerated and reported; anything else (an error status, a timeout, a lost POST) fails.
    cut_gets = result["failed_by_outcome"].get("GET ClientPayloadError", 0)
    assert result["failed"] == cut_gets <= 1, (result["failed_by_outcome"], haproxy["not_clean_samples"])
    assert result["ok"] + cut_gets == result["sent"] and result["posts_ok"] > 0
    assert result["achieved_rate"] >= 0.95 * RATE, result
    # The replica was replaced: the victim is gone, 2 RUNNING again, one of them new.
    assert result["replaced_s"] is not None and result["victim_gone"]
    assert result["replicas_after"] == 2 and result["new_replicas"] == 1
    # The kill did hit traffic, and HAProxy replayed it (else this test proves nothing about failover).
    assert haproxy["retried"] >= 1
    # Replays were harmless: each accepted POST appended its item once.
    assert result["session_items_excess"] == 0
