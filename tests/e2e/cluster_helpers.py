"""Helpers shared by the tests that drive real servers: a `ray start --head` node with token auth (one per
session, lent to each test in turn: :class:`SharedTokenHead`), `ray job submit`, polling a URL, and a small
snapshot plus a trained champion for the registry and Serve tests."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import httpx

from tests.e2e.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

__all__ = ["BIN", "REPO", "SharedTokenHead", "TokenHead", "WorkerNode", "free_port", "ray_head", "start_token_head",
           "start_worker_node", "stop_cluster", "submit", "wait_until", "commit_events", "train_tiny_champion",
           "tiny_events"]


@dataclass
class TokenHead:
    """A running `ray start --head` with RAY_AUTH_MODE=token (see :func:`start_token_head`)."""

    url: str  # the dashboard (job and Serve REST APIs)
    gcs_address: str
    env: dict[str, str]  # what a client (`ray job submit`, `serve deploy`, a driver) needs
    token: str
    ray_tmp: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/api/gcs_healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        stop_cluster(self.ray_tmp)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def alive_actors(self) -> list[dict]:
        """Every ALIVE actor of the cluster (the state API over HTTP)."""
        got = httpx.get(f"{self.url}/api/v0/actors", headers=self.headers, timeout=30,
                        params={"limit": 1000, "detail": "true", "filter_keys": "state",
                                "filter_predicates": "=", "filter_values": "ALIVE"})
        got.raise_for_status()
        return got.json()["data"]["result"]["result"]

    def reset(self, timeout: float = 90) -> None:
        """Leave the cluster as a fresh one: no running job, no Serve, no actor. Raises when it cannot.

        A lease of :class:`SharedTokenHead` ends with this, whatever its user did or left behind (a job still
        running, a Serve application, the detached rate-limiter, session or monitor actors of `aisys serve`).
        """
        deadline = time.time() + timeout
        jobs = httpx.get(f"{self.url}/api/jobs/", headers=self.headers, timeout=30).json()
        running = [job["submission_id"] for job in jobs
                   if job.get("submission_id") and job["status"] in ("PENDING", "RUNNING")]
        for job_id in running:
            httpx.post(f"{self.url}/api/jobs/{job_id}/stop", headers=self.headers, timeout=30)

        def jobs_done() -> bool:
            listed = httpx.get(f"{self.url}/api/jobs/", headers=self.headers, timeout=30).json()
            return not [j for j in listed if j.get("submission_id") in running
                        and j["status"] in ("PENDING", "RUNNING")]

        wait_until(jobs_done, timeout=max(deadline - time.time(), 1), what="the stopped jobs")
        if any(actor.get("ray_namespace") == "serve" for actor in self.alive_actors()):
            # `serve shutdown`: applications, proxies and the controller (the next user may pick another port).
            httpx.delete(f"{self.url}/api/serve/applications/", headers=self.headers, timeout=120)
        leftovers = [a for a in self.alive_actors() if a.get("ray_namespace") not in _TRANSIENT_NAMESPACES]
        if leftovers:
            # Detached actors outlive their job; only a driver can kill them. (An unnamed one cannot be looked
            # up: the wait below then fails and the lease replaces the head.)
            names = [[a["name"], a["ray_namespace"]] for a in leftovers if a.get("name")]
            proc = subprocess.run([str(BIN / "python"), "-c", _KILL_ACTORS, self.gcs_address, json.dumps(names)],
                                  env=self.env, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        wait_until(lambda: self.alive_actors() == [], timeout=max(deadline - time.time(), 1),
                   what="an empty cluster (no actor alive)", every=1)


# Serve's own actors go with `serve shutdown`; a job's supervisor actor exits with its job.
_TRANSIENT_NAMESPACES = {"serve", "SUPERVISOR_ACTOR_RAY_NAMESPACE"}
_KILL_ACTORS = """
import json, sys
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
for name, namespace in json.loads(sys.argv[2]):
    try:
        ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    except ValueError:
        pass  # gone already
"""


def start_token_head(extra_env: dict[str, str] | None = None) -> TokenHead:
    """Start a real head node on explicit ports with RAY_AUTH_MODE=token, the venv first on PATH.

    The caller stops it (:meth:`TokenHead.stop`); it is stopped here if it never became ready.
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
    head = TokenHead(url=f"http://127.0.0.1:{dash}", gcs_address=f"127.0.0.1:{gcs}", env=env, token=token,
                     ray_tmp=ray_tmp)
    try:
        started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        wait_until(lambda: httpx.get(f"{head.url}/api/version", timeout=2, headers=head.headers).status_code == 200,
                   timeout=60, what="the Ray dashboard")
    except BaseException:
        head.stop()
        raise
    return head


@contextmanager
def ray_head(extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, dict[str, str], str]]:
    """A private head node for one test (see :func:`start_token_head`), stopped on exit.

    Yields ``(dashboard_url, env, token)``. Tests that only need *a* token-auth cluster take a lease of the
    session's shared one instead (the ``token_head`` fixtures of ``tests/conftest.py``): a head costs ~6 s to
    start and ~3 s to stop, and its first job waits for a fresh job agent and uploads the working dir.
    """
    head = start_token_head(extra_env)
    try:
        yield head.url, head.env, head.token
    finally:
        head.stop()


class SharedTokenHead:
    """One token-auth head for the whole test session, lent to one user at a time.

    Each lease gets a healthy head (a dead or unreachable one is replaced first) and ends with
    :meth:`TokenHead.reset`, so what one user starts or breaks never reaches the next: jobs are stopped, Serve
    is shut down, detached actors are killed, and a head that cannot be reset is stopped and replaced. Users
    keep their own Serve ports, job ids and workspaces. :meth:`close` stops the head (session end, or as soon
    as the last test that needs it is done: see ``tests/conftest.py``).
    """

    def __init__(self) -> None:
        self._head: TokenHead | None = None
        self._leased_by: str | None = None
        self._close_when_released = False
        self.starts = 0  # heads started this session (1 unless one had to be replaced)

    @contextmanager
    def lease(self, user: str) -> Iterator[tuple[str, dict[str, str], str]]:
        """Yields ``(dashboard_url, env, token)`` as :func:`ray_head` does."""
        if self._leased_by is not None:
            raise RuntimeError(f"{user} asked for the shared Ray head while {self._leased_by} holds it")
        if self._head is not None and not self._head.healthy():
            self._head.stop()
            self._head = None
        if self._head is None:
            self._head = start_token_head()
            self.starts += 1
        self._leased_by = user
        try:
            yield self._head.url, self._head.env, self._head.token
        finally:
            self._leased_by = None
            try:
                self._head.reset()
            except Exception as err:  # noqa: BLE001 - any failure: the next user gets a new head
                print(f"\nshared Ray head: reset after {user} failed ({err!r}); stopping it", flush=True)
                self._head.stop()
                self._head = None
            if self._close_when_released:
                self._close_when_released = False
                self.close()

    def close(self) -> None:
        """Stop the head now (or when the current lease ends)."""
        if self._leased_by is not None:
            self._close_when_released = True
            return
        if self._head is not None:
            self._head.stop()
            self._head = None


@dataclass
class WorkerNode:
    """A second node joined to a :class:`TokenHead` on this machine (`ray start --address ... --block`)."""

    proc: subprocess.Popen
    node_manager_port: int

    def kill(self) -> list[int]:
        """SIGKILL the node at once, as a machine that dies: its raylet, its agents and every worker process
        (Ray workers sit in process groups of their own, so the node's process tree is listed first).
        Returns the pids killed."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        self.proc.wait(timeout=10)
        return [proc.pid for proc in procs]


def start_worker_node(head: TokenHead, num_cpus: int = 1, resources: dict[str, float] | None = None) -> WorkerNode:
    """Join a worker node to ``head`` on this machine, on explicit ports, with the head's token.

    It runs with ``--block`` in a session of its own, so :meth:`WorkerNode.kill` finds its whole process tree;
    :meth:`TokenHead.stop` stops it too (its processes carry the head's temp dir).
    """
    node_manager_port = free_port()
    cmd = [
        str(BIN / "ray"), "start", f"--address={head.gcs_address}", f"--num-cpus={num_cpus}",
        "--object-store-memory=200000000", "--disable-usage-stats", "--block",
        f"--node-manager-port={node_manager_port}", f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
        f"--resources={json.dumps(resources or {})}",
    ]
    log = open(Path(head.ray_tmp) / "worker-node.log", "w")
    proc = subprocess.Popen(cmd, env=head.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    node = WorkerNode(proc=proc, node_manager_port=node_manager_port)

    def joined() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the worker node exited: {(Path(head.ray_tmp) / 'worker-node.log').read_text()[-2000:]}")
        return len(alive_nodes(head)) >= 2

    try:
        wait_until(joined, timeout=90, what="the worker node")
    except BaseException:
        node.kill()
        raise
    return node


def alive_nodes(head: TokenHead) -> list[dict]:
    """The cluster's ALIVE nodes (the state API over HTTP)."""
    got = httpx.get(f"{head.url}/api/v0/nodes", headers=head.headers, timeout=30,
                    params={"limit": 100, "detail": "true"})
    got.raise_for_status()
    return [n for n in got.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]


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
    # A short grace: the GCS server and the autoscaler monitor ignore SIGTERM (measured: still up after 20 s), so
    # waiting longer only delays the SIGKILL; nothing of a test cluster needs a graceful drain.
    _, alive = psutil.wait_procs(procs, timeout=3)
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
