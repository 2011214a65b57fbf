"""`ray start --head` + `ray job submit` with Ray's token auth on: the ingest and train entrypoints, then the
champion served from the cluster (`aisys serve` as a long-running job), `jobs/replay.py` driving it over HTTP,
and `jobs/retrain_loop.py` answering the retrain request the monitor made from the replayed traffic."""

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import seed_mlflow_db, small_config_dict
from tests.e2e.cluster_helpers import free_port, submit, wait_until
from tests.e2e.test_jobs_more import Jobs, JobRun

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPLAYED_EVENTS, EXTRA_REQUESTS = 30, 10


@pytest.fixture(scope="module")
def token_cluster(shared_token_head):
    """The session's token-auth head (``tests/conftest.py``), held by this module's jobs until its last test."""
    with shared_token_head.lease(__name__) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def state(tmp_path_factory, mlflow_db_template) -> dict:
    """The workspace every job of this module shares, and the overrides each one gets."""
    root = tmp_path_factory.mktemp("jobs")
    seed_mlflow_db(mlflow_db_template, root / "state" / "mlflow.db")  # the workspace's default tracking URI
    cfg = small_config_dict(root / "state")
    overrides = [
        f"--set=paths.workspace={root / 'state'}",
        f"--set=data.simulator.n_users={cfg['data']['simulator']['n_users']}",
        f"--set=data.simulator.n_items={cfg['data']['simulator']['n_items']}",
        f"--set=data.simulator.n_sessions={cfg['data']['simulator']['n_sessions']}",
        "--set=train.epochs=2", "--set=model.embedding_dim=32", "--set=model.n_layers=1",
        "--set=model.stages.refit_sasrec=false",  # a second Ray Train fit per training (tests/conftest.py)
        # The monitor asks for a retrain once it has seen 20 new live events (checked every 10).
        "--set=monitor.check_every_events=10", "--set=monitor.min_new_events=20",
    ]
    return {"root": root, "overrides": overrides}


def _app_cfg(state):
    from aisys.config import load_config

    return load_config("configs/local.yaml", [o.removeprefix("--set=") for o in state["overrides"]], environ={})


@pytest.fixture(scope="module")
def trained(token_cluster, state):
    """The ingest and train jobs, submitted with `ray job submit` (the CLI, which waits for the job)."""
    url, env, _ = token_cluster
    args = ["--config", "configs/local.yaml", *state["overrides"]]
    ingest = submit(url, env, "python", "jobs/ingest.py", *args)
    train = submit(url, env, "python", "jobs/train.py", *args) if ingest.returncode == 0 else None
    return ingest, train


def test_job_api_refuses_requests_without_the_token(token_cluster):
    url, _, _ = token_cluster
    assert httpx.get(f"{url}/api/jobs/", timeout=10).status_code == 401


def test_ingest_and_train_jobs_produce_snapshot_and_champion(trained, state):
    ingest, train = trained
    assert ingest.returncode == 0, ingest.stdout[-3000:] + ingest.stderr[-3000:]
    assert "succeeded" in (ingest.stdout + ingest.stderr).lower()
    assert train is not None
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "succeeded" in (train.stdout + train.stderr).lower()

    from aisys.data.lake import Lake
    from aisys.registry.mlflow_registry import get_model_info

    app_cfg = _app_cfg(state)
    manifest = Lake(app_cfg.paths.lake_uri).latest()
    assert manifest is not None and manifest.counts["clean"] > 0
    info = get_model_info(app_cfg, app_cfg.registry.champion_alias)
    assert info["version"] == "1"
    assert info["snapshot_id"] == manifest.snapshot_id


@pytest.fixture(scope="module")
def served(token_cluster, trained, state):
    """`aisys serve` as a job on the cluster (it runs until stopped); yields ``(api url, admin key, jobs)``."""
    ingest, train = trained
    if train is None or train.returncode != 0:
        pytest.fail("no champion to serve: the ingest or train job failed")
    url, _, token = token_cluster
    jobs = Jobs(url, token)
    port = free_port()
    job_id = jobs.submit("-m", "aisys.cli", "serve", "--config", "configs/local.yaml", *state["overrides"],
                         f"--set=serve.port={port}",
                         # One replica: the replay test reads /admin/counters, which counts what *its* replica saw.
                         "--set=serve.num_replicas=1")
    api = f"http://127.0.0.1:{port}"

    def up() -> bool:
        status = jobs.client.get_job_status(job_id)
        if str(status.value) in ("FAILED", "STOPPED", "SUCCEEDED"):
            raise AssertionError(f"the serve job ended {status}:\n{jobs.client.get_job_logs(job_id)[-3000:]}")
        return httpx.get(f"{api}/healthz", timeout=5).status_code == 200

    try:
        wait_until(up, timeout=180, what="the served app's /healthz")
        # `aisys serve` created the local dev keys in the shared workspace before it started.
        keys = json.loads((Path(_app_cfg(state).paths.workspace) / "dev-keys.json").read_text())["keys"]
        yield api, keys["dev-admin"], jobs
    finally:
        jobs.client.stop_job(job_id)


@pytest.fixture(scope="module")
def replayed(served, state) -> JobRun:
    """The replay job against the served app, the key passed as $AISYS_API_KEY."""
    api, key, jobs = served
    return jobs.wait(jobs.submit(
        "jobs/replay.py", "--config", "configs/local.yaml", *state["overrides"], "--url", api,
        "--events", str(REPLAYED_EVENTS), "--requests", str(EXTRA_REQUESTS), env={"AISYS_API_KEY": key}))


def test_replay_job_drives_the_served_champion_over_http(replayed, served, state):
    assert replayed.status == "SUCCEEDED", replayed.describe()
    printed = replayed.last_json()
    assert printed["errors"] == 0
    assert printed["events_posted"] == REPLAYED_EVENTS
    assert printed["requests"] == REPLAYED_EVENTS + EXTRA_REQUESTS
    assert printed["model"]["version"] == "1" and printed["health"]["status"] == "ok"
    assert 0.0 <= printed["online_hr@10"] <= 1.0 and printed["p99_ms"] >= printed["p50_ms"] > 0

    # The app saw exactly that traffic: the replica's own counters.
    api, key, _ = served
    counters = httpx.get(f"{api}/admin/counters", headers={"X-API-Key": key}, timeout=10).json()
    assert counters["events"] == REPLAYED_EVENTS
    assert sum(counters["requests"].values()) == REPLAYED_EVENTS + EXTRA_REQUESTS
    # What the collector logged are the lake's newest events (the retrain loop may have moved the files on).
    from aisys.data.lake import Lake

    cfg = _app_cfg(state)
    newest = Lake(cfg.paths.lake_uri).read_events().column("event_id").to_pylist()
    collector = Path(cfg.paths.workspace) / "collector"
    collected = [json.loads(line)["event_id"] for path in sorted(collector.rglob("*.jsonl"))
                 for line in path.read_text().splitlines() if line.strip()]
    assert sorted(collected) == sorted(newest[-REPLAYED_EVENTS:])


def test_retrain_loop_job_answers_the_monitors_request(replayed, served, state):
    assert replayed.status == "SUCCEEDED", replayed.describe()
    _, _, jobs = served
    # Inline: the loop's driver runs ingest + retrain itself (the job is already on the cluster). The monitor's
    # request is there before the job starts; the 4 polls after it are what shows it is handled once (0.5 s apart:
    # the number of polls, not their spacing, is what counts, and at 2 s the job sat idle for 8 s).
    loop = jobs.wait(jobs.submit(
        "jobs/retrain_loop.py", "--config", "configs/local.yaml", *state["overrides"],
        "--submit", "inline", "--poll-s", "0.5", "--max-iterations", "5"))
    assert loop.status == "SUCCEEDED", loop.describe()
    lines = [json.loads(line) for line in loop.logs.splitlines() if line.startswith("{")]
    assert lines[0]["loop"] == "started" and lines[0]["mode"] == "inline"
    assert lines[-1]["loop"] == "stopped" and lines[-1]["handled"] == 1
    record = next(line for line in lines if "request" in line)
    assert record["error"] is None, record
    assert "new_data" in record["request"]["triggers"]

    # It ingested what the collector wrote (the replayed events: all already in the lake, so all duplicates) ...
    from aisys.data.lake import Lake
    from aisys.registry.mlflow_registry import get_model_info

    cfg = _app_cfg(state)
    snapshots = Lake(cfg.paths.lake_uri).list_snapshots()
    assert len(snapshots) == 2 and snapshots[-1].snapshot_id == record["ingested_snapshot"]
    assert snapshots[-1].counts["duplicates_in_lake"] == REPLAYED_EVENTS and record["ingested_rows"] == 0
    # ... then trained version 2 on it and gated it: the champion alias follows the gate's decision.
    outcome = record["outcome"]
    assert outcome["new_version"] == "2"
    champion = get_model_info(cfg, cfg.registry.champion_alias)["version"]
    assert champion == ("2" if outcome["promoted"] else "1")
    assert lines[-1]["promoted"] == int(outcome["promoted"])
