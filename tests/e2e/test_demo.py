"""`aisys demo` end to end on small data, as a user runs it: a subprocess with its own Ray."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_runs_end_to_end_and_summarises(small_config_file: Path):
    cfg = yaml.safe_load(small_config_file.read_text())
    # The demo's key gets a bucket its traffic outruns, as a fast laptop outruns the default one: the demo must
    # wait out the 429s (Retry-After) and still pass. Retry-After is whole seconds, so each wait refills a second's
    # worth (20) of a burst-20 bucket; a burst of 10 capped each refill at 10 and cost ~10 waits (10 s) instead of ~5.
    # The traffic (~120 requests) outruns it at any pace above ~24 requests/s (p50 7 ms here).
    cfg["gateway"] = {"rate_limit_per_s": 20.0, "rate_limit_burst": 20}
    cfg["model"]["stages"]["refit_sasrec"] = True  # the demo trains what ships: the SASRec refit included
    small_config_file.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "aisys.cli", "demo", "--config", str(small_config_file)],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "aisys demo summary" in proc.stdout

    summary = json.loads((Path(cfg["paths"]["workspace"]) / "demo-summary.json").read_text())
    counts = summary["ingest_counts"]
    # Every raw row is accounted for: written + quarantined + duplicates (clean = written + duplicates).
    dupes = counts["duplicates_in_batch"] + counts["duplicates_in_lake"]
    assert counts["input"] == summary["raw_rows"]
    assert counts["input"] == counts["written"] + counts["quarantined"] + dupes
    assert counts["clean"] == counts["written"] + dupes
    assert counts["quarantined"] == summary["injected_bad_rows"] > 0
    assert counts["duplicates_in_batch"] == summary["injected_duplicates"] > 0

    # A model was trained, evaluated against popularity, registered and served.
    assert summary["model_version"] == "1"
    for metrics in (summary["offline_model"], summary["offline_popularity"]):
        assert 0.0 <= metrics["hr@10"] <= 1.0
    serving = summary["serving"]
    assert serving["errors"] == 0 and summary["problems"] == [] and summary["ok"]
    assert serving["rate_limited_retries"] > 0, "the traffic stayed under the limit: lower it"
    assert serving["answers_by_status"]["429"] == serving["rate_limited_retries"]
    assert serving["events_accepted"] == serving["events_posted"]
    assert serving["requests"] >= cfg["demo"]["n_requests"]
    assert serving["events_posted"] == cfg["demo"]["n_events"]
    assert serving["model"]["version"] == "1"
    assert serving["model"]["snapshot_id"] == summary["snapshot_id"]
    assert serving["health"]["status"] == "ok"
    assert serving["fallback_responses"] > 0  # the unknown visitors got the popularity fallback
    assert serving["p50_ms"] > 0 and serving["p99_ms"] >= serving["p50_ms"]
