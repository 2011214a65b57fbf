"""`ray start --head` + `ray job submit` for the ingest and train entrypoints, with Ray's token auth on."""

import os
import secrets
import shutil
import subprocess
import tempfile
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import small_config_dict
from tests.e2e.conftest import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def token_cluster():
    """A real head node on explicit ports with RAY_AUTH_MODE=token, the venv first on PATH."""
    token = secrets.token_hex(16)
    # Ray's unix socket paths must stay under ~107 bytes: pytest's tmp_path is too deep.
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # the job driver must find the venv's python
        "VIRTUAL_ENV": str(BIN.parent),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TMPDIR": ray_tmp,
    }
    gcs, dash = free_port(), free_port()
    start = [
        str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}", "--include-dashboard=true", "--num-cpus=2",
        "--object-store-memory=400000000", "--disable-usage-stats",
        f"--temp-dir={ray_tmp}",
        # Explicit ports for the agents too: the test session's own Ray already holds the defaults
        # (the job agent's 52365 among them), and a job agent that cannot bind never accepts a job.
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
    ]
    started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/api/version", timeout=2, headers={"Authorization": f"Bearer {token}"}).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield url, env, token
    finally:
        stop_cluster(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def stop_cluster(ray_tmp: str) -> None:
    """Stop only this cluster's processes (`ray stop` would also kill the test session's own Ray)."""
    import psutil

    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        if ray_tmp in " ".join(proc.info["cmdline"] or []):
            procs.append(proc)
            procs.extend(proc.children(recursive=True))
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        proc.kill()


def submit(url: str, env: dict, *entrypoint: str) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "ray"), "job", "submit", f"--address={url}", "--working-dir", str(REPO), "--", *entrypoint]
    deadline = time.time() + 120
    while True:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
        # The dashboard answers before its job agent is up; Ray asks callers to retry.
        if "No available agent" not in proc.stderr or time.time() > deadline:
            return proc
        time.sleep(3)


def test_job_api_refuses_requests_without_the_token(token_cluster):
    url, _, _ = token_cluster
    assert httpx.get(f"{url}/api/jobs/", timeout=10).status_code == 401


def test_ingest_and_train_jobs_produce_snapshot_and_champion(token_cluster, tmp_path):
    url, env, _ = token_cluster
    cfg = small_config_dict(tmp_path / "state")
    overrides = [
        f"--set=paths.workspace={tmp_path / 'state'}",
        f"--set=data.simulator.n_users={cfg['data']['simulator']['n_users']}",
        f"--set=data.simulator.n_items={cfg['data']['simulator']['n_items']}",
        f"--set=data.simulator.n_sessions={cfg['data']['simulator']['n_sessions']}",
        "--set=train.epochs=2", "--set=model.embedding_dim=32", "--set=model.n_layers=1",
    ]
    ingest = submit(url, env, "python", "jobs/ingest.py", "--config", "configs/local.yaml", *overrides)
    assert ingest.returncode == 0, ingest.stdout[-3000:] + ingest.stderr[-3000:]
    assert "succeeded" in (ingest.stdout + ingest.stderr).lower()

    train = submit(url, env, "python", "jobs/train.py", "--config", "configs/local.yaml", *overrides)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "succeeded" in (train.stdout + train.stderr).lower()

    from aisys.config import load_config
    from aisys.data.lake import Lake
    from aisys.registry.mlflow_registry import get_model_info

    app_cfg = load_config("configs/local.yaml", [o.removeprefix("--set=") for o in overrides], environ={})
    manifest = Lake(app_cfg.paths.lake_uri).latest()
    assert manifest is not None and manifest.counts["clean"] > 0
    info = get_model_info(app_cfg, app_cfg.registry.champion_alias)
    assert info["version"] == "1"
    assert info["snapshot_id"] == manifest.snapshot_id
