"""Helpers shared by the tests that drive real servers: a `ray start --head` node with token auth, `ray job
submit`, polling a URL, and a small snapshot plus a trained champion for the registry and Serve tests."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import httpx

from tests.e2e.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

__all__ = ["BIN", "REPO", "free_port", "ray_head", "stop_cluster", "submit", "wait_until", "commit_events",
           "train_tiny_champion", "tiny_events"]


@contextmanager
def ray_head(extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, dict[str, str], str]]:
    """A real head node on explicit ports with RAY_AUTH_MODE=token, the venv first on PATH.

    Yields ``(dashboard_url, env, token)``; ``env`` is what a client (`ray job submit`, `serve deploy`) needs.
    """
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
        **(extra_env or {}),
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
    try:
        started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        url = f"http://127.0.0.1:{dash}"
        headers = {"Authorization": f"Bearer {token}"}
        wait_until(lambda: httpx.get(f"{url}/api/version", timeout=2, headers=headers).status_code == 200,
                   timeout=60, what="the Ray dashboard")
        yield url, env, token
    finally:
        stop_cluster(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def stop_cluster(ray_tmp: str) -> None:
    """Stop only this cluster's processes (`ray stop` would also kill the test session's own Ray)."""
    import psutil

    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if ray_tmp in " ".join(proc.info["cmdline"] or []):
                procs.append(proc)
                procs.extend(proc.children(recursive=True))
        except psutil.Error:
            pass
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def submit(url: str, env: dict, *entrypoint: str) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir <repo>`, retried while the dashboard's job agent is not up yet."""
    cmd = [str(BIN / "ray"), "job", "submit", f"--address={url}", "--working-dir", str(REPO), "--", *entrypoint]
    deadline = time.time() + 120
    while True:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
        # The dashboard answers before its job agent is up; Ray asks callers to retry.
        if "No available agent" not in proc.stderr or time.time() > deadline:
            return proc
        time.sleep(3)


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> None:
    """Poll ``check`` (connection errors count as 'not yet') until it is true; fail naming ``what``."""
    deadline = time.time() + timeout
    last: Exception | None = None
    while time.time() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError) as err:
            last = err
        time.sleep(every)
    raise AssertionError(f"{what} was not ready after {timeout:.0f}s (last error: {last!r})")


def tiny_events(n_users: int = 40, n_items: int = 30, n_sessions: int = 200):
    """A small seeded simulator table (``EVENT_SCHEMA``)."""
    from aisys.config import SimulatorConfig
    from aisys.data.simulator import simulate_events

    return simulate_events(SimulatorConfig(n_users=n_users, n_items=n_items, n_categories=4,
                                           n_sessions=n_sessions, days=5))


def commit_events(lake, events) -> str:
    """Write ``events`` as one committed snapshot of ``lake`` without Ray; returns the snapshot id."""
    from aisys.data.lake import COUNT_KEYS, Manifest, new_snapshot_id
    from aisys.schemas import schema_hash

    snapshot_id = new_snapshot_id()
    files = lake.write_event_files(events, snapshot_id)
    n = events.num_rows
    counts = dict.fromkeys(COUNT_KEYS, 0) | {"input": n, "clean": n, "written": n, "total_rows": n}
    lake.commit(Manifest(snapshot_id=snapshot_id, parent_id=None, created_at=datetime.now(timezone.utc).isoformat(),
                         source="tests.e2e", schema_hash=schema_hash(), counts=counts,
                         files=[path for path, _ in files]))
    return snapshot_id


def train_tiny_champion(cfg, events, snapshot_id: str, epochs: int = 2):
    """Train SASRec for a few epochs with the plain loop (no Ray Train: seconds, not ~15 s of setup)
    and register it under ``cfg.registry.champion_alias``; returns the ``RegisteredModel``."""
    import torch

    from aisys.features.sequences import build_vocabulary, user_histories
    from aisys.models.bundle import ModelBundle
    from aisys.models.sasrec import SASRec, SASRecConfig, cpu_state_dict
    from aisys.registry.mlflow_registry import log_and_register
    from aisys.training.loop import iterate_batches, seed_everything, train_epoch, training_examples

    torch.set_num_threads(cfg.train.torch_threads)
    seed_everything(cfg.train.seed)
    vocab = build_vocabulary(events, cfg.features.event_weights)
    histories = user_histories(events, vocab.item_index())
    config = SASRecConfig.from_app(cfg, vocab.n_items)
    model = SASRec(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    inputs, targets = training_examples(histories, cfg.features.max_seq_len)
    history = []
    for epoch in range(epochs):
        loss = train_epoch(model, iterate_batches(inputs, targets, cfg.train.batch_size, seed=epoch), optimizer)
        history.append({"epoch": epoch, "loss": loss})
    bundle = ModelBundle(
        model_kind="sasrec", model_config=config.to_dict(), item_ids=vocab.item_ids,
        item_popularity=vocab.item_popularity, state_dict=cpu_state_dict(model),
        item_categories=vocab.item_categories, max_seq_len=cfg.features.max_seq_len,
        lineage={"snapshot_id": snapshot_id, "code_version": "tests"}, metrics={"loss": history[-1]["loss"]},
    )
    return log_and_register(cfg, bundle, params={"epochs": epochs, "source": "tests.e2e"},
                            metrics={"loss": history[-1]["loss"]}, history=history, snapshot_id=snapshot_id,
                            alias=cfg.registry.champion_alias)
