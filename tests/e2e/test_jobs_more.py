"""Every stage as a `ray job submit` job on a real `ray start --head` cluster with token auth, on a tiny
MovieLens-format folder written here (nothing is downloaded).

Jobs go through the job API (`JobSubmissionClient`, the bearer token in its headers) and each one's product is
checked from the outside: the lake snapshot, the registered versions and their aliases, the gate's decision
runs, the rollback, the evaluation export. The order makes every gate outcome certain on tiny data:

    evaluate (concurrently, it needs nothing else)
    ingest -> tune (v1 = challenger; a learning rate of ~1e-7 for one epoch: v1 has learned nothing)
           -> promote (no champion yet: v1 promoted)
           -> train (v2, trained properly, gated against v1: it beats an untrained model, so it is promoted)
           -> promote with a strict gate (v1 refused: exit 3, the job FAILED)
           -> promote --rollback (champion back to v1)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import seed_mlflow_db
from tests.e2e.cluster_helpers import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

N_USERS, N_ITEMS, PER_USER = 30, 40, 12
GENRES = 19  # GroupLens u.item ends with 19 genre flags
FIRST_TIMESTAMP = 880_000_000  # 1997, like the real data: older events are quarantined by ingest
JOB_TIMEOUT_S = 240


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
    """A tiny MovieLens folder, a workspace, and the overrides every job gets."""
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
    return {"root": root, "data": data, "overrides": overrides, "export": root / "out" / "ease-loo.parquet"}


def _flags(overrides: list[str]) -> list[str]:
    return ["--config", "configs/local.yaml", *(f"--set={o}" for o in overrides)]


@pytest.fixture(scope="module")
def runs(state, shared_token_head) -> dict[str, JobRun | None]:
    """Run the whole chain once on the session's token-auth head (see the module docstring); a stage the chain
    could not reach is None."""
    flags = _flags(state["overrides"])
    with shared_token_head.lease(__name__) as (url, _, token):
        jobs = Jobs(url, token)
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
        results: dict[str, JobRun | None] = dict.fromkeys([name for name, _, _ in chain], None)
        for name, args, expected in chain:
            results[name] = jobs.run(*args)
            print(f"{name}: {results[name].status} at {time.perf_counter() - started:.0f}s")
            if results[name].status != expected:
                break  # the later stages need this one
        results["evaluate"] = jobs.wait(evaluate_id)
        print(f"all jobs done at {time.perf_counter() - started:.0f}s")
    return results  # the lease is over (the cluster reset): the tests read the stores the jobs wrote


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


def test_ingest_job_commits_the_movielens_folder_as_a_lake_snapshot(runs, state):
    printed = _run(runs, "ingest").last_json()
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
