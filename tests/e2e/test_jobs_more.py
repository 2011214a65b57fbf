"""Every stage as a `ray job submit` job on a real `ray start --head` cluster with token auth, on a tiny
MovieLens-format folder written here (nothing is downloaded), then the champion served from the cluster and the
closed loop answering the monitor.

Jobs go through the job API (`JobSubmissionClient`, the bearer token in its headers; the ingest through the
`ray job submit` CLI, the token in its environment) and each one's product is checked from the outside: the
lake snapshot, the registered versions and their aliases, the gate's decision runs, the rollback, the evaluation
export, the served app's traffic, the loop's retrain. One workspace and one lease of the session's head serve the
whole module, so the stages after the chain start from its champion instead of ingesting and training again.
The order makes every gate outcome certain on tiny data:

    evaluate (concurrently, it needs nothing else)
    ingest -> tune (v1 = challenger; a learning rate of ~1e-7 for one epoch: v1 has learned nothing)
           -> promote (no champion yet: v1 promoted)
           -> train (v2, trained properly, gated against v1: it beats an untrained model, so it is promoted)
           -> promote with a strict gate (v1 refused: exit 3, the job FAILED)
           -> promote --rollback (champion back to v1)
    then `aisys serve` as a long-running job (champion v1; its monitor asks for a retrain after 20 new events)
           -> jobs/replay.py (the lake's 60 newest events: every user's last two MovieLens rows; and 10 more
              requests, over HTTP)
           -> jobs/retrain_loop.py --submit inline (ingests what the collector wrote, all of it already in the
              lake: the second snapshot; trains v3 and gates it against v1)

The chain's tests read the stores as the chain left them: pytest runs a module's tests in file order, and the
serve job starts only with the first test that needs it, after them.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import seed_mlflow_db
from tests.e2e.cluster_helpers import REPO, free_port, submit, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

N_USERS, N_ITEMS, PER_USER = 30, 40, 12
GENRES = 19  # GroupLens u.item ends with 19 genre flags
FIRST_TIMESTAMP = 880_000_000  # 1997, like the real data: older events are quarantined by ingest
JOB_TIMEOUT_S = 240
# Two per user, not one: the app seeds each user's session from the served model's snapshot, and a session
# ignores its own last event posted again (a retry). Replaying only the newest row of each user (the newest 30
# are one per user here) would count nothing and the monitor would never ask for a retrain; the older of the two
# moves the session on, so both count, as they did with the shop simulator's multi-event sessions.
REPLAYED_EVENTS, EXTRA_REQUESTS = 2 * N_USERS, 10


def write_tiny_movielens(folder: Path, n_users: int = N_USERS, n_items: int = N_ITEMS,
                         per_user: int = PER_USER, seed: int = 0) -> Path:
    """A GroupLens-format ml-100k folder (``u.data``, ``u.item``, ``u.user``) with two taste groups.

    Odd users rate mostly the first half of the catalogue (genre Action), even users the second (Comedy), so
    a model has something to learn; timestamps interleave the users over a few weeks of 1997.
    """
    rng = np.random.default_rng(seed)
    half = n_items // 2
    rows = []
    for user in range(1, n_users + 1):
        own = np.arange(1, half + 1) if user % 2 else np.arange(half + 1, n_items + 1)
        other = np.setdiff1d(np.arange(1, n_items + 1), own)
        items = np.concatenate([rng.choice(own, size=per_user - 2, replace=False), rng.choice(other, 2, replace=False)])
        rng.shuffle(items)
        for step, item in enumerate(items):
            seconds = FIRST_TIMESTAMP + step * 86_400 + user * 600
            rows.append(f"{user}\t{item}\t{rng.integers(1, 6)}\t{seconds}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("\n".join(rows) + "\n")
    lines = []
    for item in range(1, n_items + 1):
        flags = ["0"] * GENRES
        flags[1 if item <= half else 5] = "1"  # Action / Comedy
        lines.append(f"{item}|Movie {item} (1997)|01-Jan-1997||http://example.invalid/{item}|{'|'.join(flags)}\n")
    (folder / "u.item").write_text("".join(lines), encoding="latin-1")
    (folder / "u.user").write_text(
        "".join(f"{u}|{18 + 2 * u}|{'MF'[u % 2]}|{('student', 'engineer', 'artist')[u % 3]}|{10000 + u}\n"
                for u in range(1, n_users + 1))
    )
    return folder


@dataclass
class JobRun:
    """A finished job: its id, terminal status, driver message and logs."""

    job_id: str
    status: str
    message: str
    logs: str

    def last_json(self) -> dict:
        """The last line of the logs that is a JSON object (what each entrypoint prints)."""
        for line in reversed(self.logs.splitlines()):
            line = line.strip()
            if line.startswith("{") and line.endswith("}"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    continue
        raise AssertionError(f"job {self.job_id} ({self.status}) printed no JSON line; logs:\n{self.logs[-3000:]}")

    def describe(self) -> str:
        return f"job {self.job_id} {self.status}: {self.message}\n{self.logs[-3000:]}"


class Jobs:
    """Submit entrypoints from this repo to a token-auth cluster and wait for them, through the job API."""

    def __init__(self, url: str, token: str) -> None:
        from ray.job_submission import JobSubmissionClient

        # The token travels as a header: this test process must not switch its own Ray to token auth.
        self.client = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})

    def submit(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Submit ``python <args>`` with the repo as working dir; retried while the job agent starts."""
        entrypoint = " ".join(["python", *args])
        runtime_env = {"working_dir": str(REPO), **({"env_vars": env} if env else {})}
        deadline = time.time() + 120
        while True:
            try:
                return self.client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            except RuntimeError as err:
                # The dashboard answers before its job agent is up; Ray asks callers to retry.
                if "No available agent" not in str(err) or time.time() > deadline:
                    raise
                time.sleep(2)

    def wait(self, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> JobRun:
        from ray.job_submission import JobStatus

        deadline = time.time() + timeout_s
        while True:
            status = self.client.get_job_status(job_id)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                break
            if time.time() > deadline:
                self.client.stop_job(job_id)
                raise AssertionError(f"job {job_id} still {status} after {timeout_s:.0f}s:\n"
                                     f"{self.client.get_job_logs(job_id)[-3000:]}")
            time.sleep(0.5)
        info = self.client.get_job_info(job_id)
        return JobRun(job_id, str(status.value), info.message or "", self.client.get_job_logs(job_id))

    def run(self, *args: str) -> JobRun:
        return self.wait(self.submit(*args))


@pytest.fixture(scope="module")
def state(tmp_path_factory, mlflow_db_template) -> dict:
    """A tiny MovieLens folder, a workspace, the overrides every job gets and those the live stages add."""
    root = tmp_path_factory.mktemp("jobs-more")
    seed_mlflow_db(mlflow_db_template, root / "ws" / "mlflow.db")  # the workspace's default tracking URI
    data = write_tiny_movielens(root / "ml-100k")
    overrides = [
        f"paths.workspace={root / 'ws'}", "data.source=movielens", f"data.movielens.path={data}",
        "features.max_seq_len=20", "model.embedding_dim=16", "model.n_layers=1", "model.n_heads=1",
        "model.stages.refit_sasrec=false", "train.epochs=2", "train.batch_size=64",
        "tune.num_samples=2", "tune.max_concurrent=2", "tune.max_epochs=1", "tune.grace_period=1",
        "tune.lr=[1e-7,2e-7]",  # v1 learns nothing, so the trained v2 beats it at the gate (module docstring)
        "tune.embedding_dim=[16,32]", "tune.n_layers=[1]", "tune.n_heads=[1]", "tune.max_seq_len=[10,20]",
    ]
    # The served app's monitor asks for a retrain once it has seen 20 new live events (checked every 10); the
    # loop's decider reads the same threshold, so the serve, replay and loop jobs all get these.
    live = [*overrides, "monitor.check_every_events=10", "monitor.min_new_events=20"]
    return {"root": root, "data": data, "overrides": overrides, "live": live,
            "export": root / "out" / "ease-loo.parquet"}


def _flags(overrides: list[str]) -> list[str]:
    return ["--config", "configs/local.yaml", *(f"--set={o}" for o in overrides)]


@pytest.fixture(scope="module")
def token_cluster(shared_token_head):
    """The session's token-auth head (``tests/conftest.py``), held by this module's jobs until its last test:
    the serve job must outlive the chain, and the lease's end resets the cluster."""
    with shared_token_head.lease(__name__) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def jobs(token_cluster) -> Jobs:
    url, _, token = token_cluster
    return Jobs(url, token)


def _cli_run(cluster, jobs: Jobs, *args: str) -> tuple[subprocess.CompletedProcess, JobRun]:
    """``python <args>`` through `ray job submit` (the CLI, the token in its environment, waiting for the job),
    then read back through the job API like every other job."""
    url, env, _ = cluster
    proc = submit(url, env, "python", *args)
    found = re.search(r"Job '([^']+)' submitted successfully", proc.stdout + proc.stderr)
    assert found, f"`ray job submit` submitted nothing:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc, jobs.wait(found.group(1))


@pytest.fixture(scope="module")
def runs(state, token_cluster, jobs) -> dict[str, Any]:
    """Run the whole chain once (see the module docstring), the evaluate job beside it; a stage the chain could
    not reach is None. The ingest goes through the `ray job submit` CLI (its output is ``ingest_cli``), so the
    CLI's token auth stays covered; the other jobs through the job API."""
    flags = _flags(state["overrides"])
    started = time.perf_counter()
    evaluate_id = jobs.submit("jobs/evaluate.py", *flags, "--dataset", "ml-100k", "--split", "loo",
                              "--model", "ease", "--export", str(state["export"]))
    chain = [
        ("ingest", ["jobs/ingest.py", *flags], "SUCCEEDED"),
        ("tune", ["jobs/tune.py", *flags], "SUCCEEDED"),
        ("promote", ["jobs/promote.py", *flags], "SUCCEEDED"),
        # Trained for real (the two taste groups are easy to learn); the guardrails are relaxed because the
        # champion it is compared with is untrained: its popularity and segments are no yardstick.
        ("train", ["jobs/train.py", *flags, "--set=train.epochs=8", "--set=train.lr=0.01",
                   "--set=gate.max_popularity_ratio=100", "--set=gate.segment_tolerance=10"], "SUCCEEDED"),
        # Needs 101x the champion's NDCG@10: refused whatever the models learned.
        ("refuse", ["jobs/promote.py", *flags, "--set=gate.min_improvement=100"], "FAILED"),
        ("rollback", ["jobs/promote.py", *flags, "--rollback"], "SUCCEEDED"),
    ]
    results: dict[str, Any] = dict.fromkeys([name for name, _, _ in chain], None)
    for name, args, expected in chain:
        if name == "ingest":
            results["ingest_cli"], results[name] = _cli_run(token_cluster, jobs, *args)
        else:
            results[name] = jobs.run(*args)
        print(f"{name}: {results[name].status} at {time.perf_counter() - started:.0f}s")
        if results[name].status != expected:
            break  # the later stages need this one
    # Waited for here, not left running: its export is checked, and the serve job should not share the CPUs.
    results["evaluate"] = jobs.wait(evaluate_id)
    print(f"all jobs done at {time.perf_counter() - started:.0f}s")
    return results


def _run(runs: dict, name: str, expected: str = "SUCCEEDED") -> JobRun:
    run = runs[name]
    assert run is not None, f"the {name} job was not reached: an earlier job ended unexpectedly"
    assert run.status == expected, run.describe()
    return run


def _cfg(state, *extra: str):
    from aisys.config import load_config

    return load_config(REPO / "configs" / "local.yaml", [*state["overrides"], *extra], environ={})


def _client(cfg):
    import mlflow

    from aisys.registry.mlflow_registry import configure_mlflow

    configure_mlflow(cfg)
    return mlflow.MlflowClient()


def _ratings(state) -> list[list[str]]:
    return [line.split("\t") for line in (state["data"] / "u.data").read_text().splitlines()]


def test_job_api_refuses_requests_without_the_token(token_cluster):
    url, _, _ = token_cluster
    assert httpx.get(f"{url}/api/jobs/", timeout=10).status_code == 401


def test_ingest_job_commits_the_movielens_folder_as_a_lake_snapshot(runs, state):
    printed = _run(runs, "ingest").last_json()
    cli = runs["ingest_cli"]
    assert cli.returncode == 0 and "succeeded" in (cli.stdout + cli.stderr).lower(), cli.stdout[-3000:]
    from aisys.data.lake import Lake

    cfg = _cfg(state)
    manifest = Lake.from_config(cfg.paths).latest()
    assert manifest is not None and manifest.snapshot_id == printed["snapshot_id"]
    ratings = _ratings(state)
    assert manifest.counts["written"] == manifest.counts["clean"] == len(ratings)
    assert manifest.counts["quarantined"] == 0
    events = Lake.from_config(cfg.paths).read_events(manifest.snapshot_id)
    assert sorted(zip(events.column("user_id").to_pylist(), events.column("item_id").to_pylist())) == \
        sorted((u, i) for u, i, _, _ in ratings)
    assert set(events.column("event_type").to_pylist()) == {"rating"}


def test_tune_job_registers_the_best_trial_as_challenger(runs, state):
    printed = _run(runs, "tune").last_json()
    assert printed["trials"] == 2 and printed["version"] == "1"
    cfg = _cfg(state)
    version = _client(cfg).get_model_version(cfg.registry.model_name, "1")
    assert "challenger" in version.aliases
    assert version.tags["lake.snapshot_id"] == runs["ingest"].last_json()["snapshot_id"]


def test_promote_job_makes_the_challenger_the_first_champion(runs, state):
    printed = _run(runs, "promote").last_json()
    assert printed["promoted"] is True and printed["candidate"] == "1" and printed["champion"] is None
    assert any("no champion yet" in reason for reason in printed["reasons"])
    cfg = _cfg(state)
    decision = _client(cfg).get_run(printed["run_id"])
    assert decision.data.tags["aisys.decision"] == "promote"
    assert decision.data.params["candidate_version"] == "1"
    assert decision.data.params["champion_version"] == "none"
    assert printed["holdout_id"].startswith(runs["ingest"].last_json()["snapshot_id"])


def test_train_job_registers_a_new_version_and_the_gate_promotes_it(runs, state):
    printed = _run(runs, "train").last_json()
    assert printed["version"] == "2"
    assert printed["promoted"] is True and printed["champion_before"] == "1", printed["reasons"]
    assert 0.0 <= printed["metrics"]["hr@10"] <= 1.0 and 0.0 <= printed["popularity"]["hr@10"] <= 1.0
    cfg = _cfg(state)
    version = _client(cfg).get_model_version(cfg.registry.model_name, "2")
    assert version.tags["lake.snapshot_id"] == runs["ingest"].last_json()["snapshot_id"]
    assert version.run_id == printed["run_id"]


def test_promote_job_refused_by_the_gate_fails_with_exit_3_and_keeps_the_champion(runs, state):
    run = _run(runs, "refuse", expected="FAILED")
    assert "exit code 3" in run.message, run.describe()
    printed = run.last_json()
    assert printed["promoted"] is False and printed["candidate"] == "1" and printed["champion"] == "2"
    assert any("needs >=" in reason for reason in printed["reasons"])
    cfg = _cfg(state)
    decision = _client(cfg).get_run(printed["run_id"])
    assert decision.data.tags["aisys.decision"] == "refuse"
    assert decision.data.params["gate.min_improvement"] == "100.0"


def test_rollback_job_restores_the_previous_champion(runs, state):
    printed = _run(runs, "rollback").last_json()
    assert printed == {"rolled_back_from": "2", "to": "1"}
    cfg = _cfg(state)
    client = _client(cfg)
    assert str(client.get_model_version_by_alias(cfg.registry.model_name, "champion").version) == "1"
    assert "aisys.rolled_back_at" in client.get_model_version(cfg.registry.model_name, "2").tags
    # What the serve job below will load: the champion as the app reads it, trained on the lake's only snapshot.
    from aisys.data.lake import Lake
    from aisys.registry.mlflow_registry import get_model_info

    info = get_model_info(cfg, cfg.registry.champion_alias)
    assert info["version"] == "1"
    assert info["snapshot_id"] == Lake.from_config(cfg.paths).latest().snapshot_id


def test_evaluate_job_exports_ranked_top_lists_for_every_user(runs, state):
    import pyarrow.parquet as pq

    printed = _run(runs, "evaluate").last_json()
    assert printed["model"] == "ease" and printed["split"] == "loo" and "l2" in printed["settings"]
    assert printed["test"]["n_users"] == N_USERS and 0.0 <= printed["test"]["ndcg@10"] <= 1.0
    assert printed["export"] == str(state["export"])
    table = pq.read_table(state["export"])
    assert table.column_names == ["user_id", "rank", "item_id"]
    rows = table.to_pylist()
    assert {r["user_id"] for r in rows} == {str(u) for u in range(1, N_USERS + 1)}
    rated: dict[str, set[str]] = {}
    last: dict[str, tuple[int, str]] = {}
    for user, item, _, seconds in _ratings(state):
        rated.setdefault(user, set()).add(item)
        last[user] = max(last.get(user, (0, "")), (int(seconds), item))
    for user in rated:
        mine = [r for r in rows if r["user_id"] == user]
        assert [r["rank"] for r in mine] == list(range(1, len(mine) + 1))
        # LOO: every catalogue item except the user's known history (all ratings but the last) is ranked.
        known = rated[user] - {last[user][1]}
        assert {r["item_id"] for r in mine} == {str(i) for i in range(1, N_ITEMS + 1)} - known


@pytest.fixture(scope="module")
def served(runs, jobs, state):
    """`aisys serve` as a job on the cluster (it runs until stopped), serving the chain's champion; yields
    ``(api url, admin key)``."""
    rollback = runs["rollback"]
    if rollback is None or rollback.status != "SUCCEEDED":
        pytest.fail("no champion as the chain should leave it: a job of the chain ended unexpectedly")
    port = free_port()
    job_id = jobs.submit("-m", "aisys.cli", "serve", *_flags(state["live"]), f"--set=serve.port={port}",
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
        keys = json.loads((Path(_cfg(state).paths.workspace) / "dev-keys.json").read_text())["keys"]
        yield api, keys["dev-admin"]
    finally:
        jobs.client.stop_job(job_id)


@pytest.fixture(scope="module")
def replayed(served, jobs, state) -> JobRun:
    """The replay job against the served app, the key passed as $AISYS_API_KEY."""
    api, key = served
    return jobs.wait(jobs.submit(
        "jobs/replay.py", *_flags(state["live"]), "--url", api,
        "--events", str(REPLAYED_EVENTS), "--requests", str(EXTRA_REQUESTS), env={"AISYS_API_KEY": key}))


def test_replay_job_drives_the_served_champion_over_http(replayed, served, state):
    assert replayed.status == "SUCCEEDED", replayed.describe()
    printed = replayed.last_json()
    assert printed["errors"] == 0
    assert printed["events_posted"] == REPLAYED_EVENTS
    assert printed["requests"] == REPLAYED_EVENTS + EXTRA_REQUESTS
    assert printed["model"]["version"] == "1" and printed["health"]["status"] == "ok"  # the rolled-back champion
    assert 0.0 <= printed["online_hr@10"] <= 1.0 and printed["p99_ms"] >= printed["p50_ms"] > 0

    # The app saw exactly that traffic: the replica's own counters.
    api, key = served
    counters = httpx.get(f"{api}/admin/counters", headers={"X-API-Key": key}, timeout=10).json()
    assert counters["events"] == REPLAYED_EVENTS
    assert sum(counters["requests"].values()) == REPLAYED_EVENTS + EXTRA_REQUESTS
    # What the collector logged are the lake's newest events (the retrain loop may have moved the files on). The
    # lake's read order is by partition, not time: the newest are taken in the replay's own order.
    import pyarrow.compute as pc

    from aisys.data.lake import Lake

    cfg = _cfg(state)
    events = Lake.from_config(cfg.paths).read_events()
    events = events.take(pc.sort_indices(events, sort_keys=[("timestamp", "ascending"), ("event_id", "ascending")]))
    newest = events.column("event_id").to_pylist()[-REPLAYED_EVENTS:]
    collector = Path(cfg.paths.workspace) / "collector"
    collected = [json.loads(line)["event_id"] for path in sorted(collector.rglob("*.jsonl"))
                 for line in path.read_text().splitlines() if line.strip()]
    assert sorted(collected) == sorted(newest)


def test_retrain_loop_job_answers_the_monitors_request(runs, replayed, served, jobs, state, token_cluster):
    assert replayed.status == "SUCCEEDED", replayed.describe()
    # As on a cluster: the loop's driver ingests the collected events itself, then submits the retrain as its own
    # Ray job (`jobs/retrain.py`, through the job API with the cluster's token, which the job inherits) and reads
    # its outcome from that job's logs. The monitor's request is there before the loop starts; the polls after it
    # show it is handled once (0.5 s apart: the number of polls, not their spacing, is what counts). Its ingest
    # reads the collector's JSONL files whatever data.source says: the MovieLens overrides change nothing there.
    url, _, _ = token_cluster
    loop = jobs.wait(jobs.submit(
        "jobs/retrain_loop.py", *_flags(state["live"]),
        "--submit", "job", "--job-address", url, "--poll-s", "0.5", "--max-iterations", "5"))
    assert loop.status == "SUCCEEDED", loop.describe()
    lines = [json.loads(line) for line in loop.logs.splitlines() if line.startswith("{")]
    assert lines[0]["loop"] == "started" and lines[0]["mode"] == "job"
    assert lines[-1]["loop"] == "stopped" and lines[-1]["handled"] == 1
    record = next(line for line in lines if "request" in line)
    assert record["error"] is None, record
    assert record["mode"] == "job" and "new_data" in record["request"]["triggers"]
    # The retrain job was told why (the request travels in its environment) and says so in its outcome.
    assert record["outcome"]["trigger"] == ",".join(record["request"]["triggers"]), record["outcome"]

    # It ingested what the collector wrote (the replayed events: all already in the lake, so all duplicates) as
    # the workspace's second snapshot (the chain's ingest made the first) ...
    from aisys.data.lake import Lake
    from aisys.registry.mlflow_registry import get_model_info

    cfg = _cfg(state)
    snapshots = Lake.from_config(cfg.paths).list_snapshots()
    assert len(snapshots) == 2 and snapshots[-1].snapshot_id == record["ingested_snapshot"]
    assert snapshots[0].snapshot_id == runs["ingest"].last_json()["snapshot_id"]
    assert snapshots[-1].counts["duplicates_in_lake"] == REPLAYED_EVENTS and record["ingested_rows"] == 0
    # ... then trained version 3 (after the chain's v1 and v2) and gated it against the champion v1: the champion
    # alias follows the gate's decision.
    outcome = record["outcome"]
    assert outcome["new_version"] == "3" and outcome["champion_before"] == "1"
    champion = get_model_info(cfg, cfg.registry.champion_alias)["version"]
    assert champion == ("3" if outcome["promoted"] else "1")
    assert lines[-1]["promoted"] == int(outcome["promoted"])
