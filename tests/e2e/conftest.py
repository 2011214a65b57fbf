"""Helpers for end-to-end tests: free ports, a small config written to a YAML file, and the servers shared by the
session: a private PostgreSQL, an MLflow tracking server on it, and a moto S3 server.

One of each serves every module that needs it (test_mlflow_postgres.py, test_multinode.py, test_s3.py), so the
tests that share one keep to their own names: an MLflow experiment and registered model of their own on the
tracking server, a key prefix of their own in ``BUCKET``.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import small_config_dict

# Shared by every user of ``s3_endpoint``; each writes under its own prefix (registry/, readers/,
# multinode/), so none lists another's objects.
BUCKET = "aisys-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_serve_port() -> int:
    """A free port for a test's Serve, outside the OS's ephemeral range and Ray's worker ports (``free_tcp_port``):
    HAProxy binds it a minute after it is chosen."""
    from aisys.runtime.ingress import free_tcp_port

    return free_tcp_port()


@pytest.fixture
def small_config_file(tmp_path: Path) -> Path:
    data = small_config_dict(tmp_path)
    data["serve"] = {"port": free_serve_port()}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --- servers shared by the session ---------------------------------------------------------------------------------
# Session scope, not module scope: with module scope test_mlflow_postgres.py and test_multinode.py each started a
# PostgreSQL and an MLflow server (a new store is migrated on the first start, ~10 s), and test_multinode.py and
# test_s3.py each a moto server. Shared, test_multinode.py's setup went from 37.1 s to 17.2 s (its Ray cluster
# alone is left) and test_s3.py's moto start (0.7 s) went; the three modules took 184.9 s instead of 228.2 s,
# 155.2 s with the MLflow server's job execution off too (2026-12-06, 2-core box, one run each). They idle
# between their users (~0.6 GiB together) and stop at the session's end. cluster_helpers imports free_port from here, so the fixtures import it inside, not at the top.


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL server binaries (``/usr/lib/postgresql/<major>/bin``), if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def as_postgres(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: run them as the `postgres` user when we are root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _tail(path: Path) -> str:
    return path.read_text()[-2000:] if path.exists() else ""


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port> with a database ``mlflow`` (the MLflow server's
    store); skipped when the server binaries are missing. One per session, not per module (~10 s of setup saved
    with the MLflow server: see above); stopped at the session's end."""
    pg = postgres_bin()
    if pg is None:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
                    "(apt-get install postgresql; .ci/run installs it)")
    root = Path(tempfile.mkdtemp(prefix="aisys-pg-", dir="/tmp"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    run = lambda *cmd: subprocess.run(as_postgres(list(cmd)), capture_output=True, text=True, timeout=120)  # noqa: E731
    init = run(str(pg / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    assert init.returncode == 0, init.stdout[-2000:] + init.stderr[-2000:]
    options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = run(str(pg / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "postgres.log"), "-w", "start")
    try:
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:] + _tail(root / "postgres.log")
        created = run(str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
        assert created.returncode == 0, created.stderr
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        run(str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(postgres_url, tmp_path_factory):
    """`mlflow server --workers 1` on the Postgres store; yields its URL. One per session, not per module: its
    start (and the store's migration) is the bulk of the ~20 s test_multinode.py's setup no longer pays (see
    above). Its process group is stopped at the session's end. Users share its tracking store and registry, so
    each keeps to an experiment (``train.experiment``) and a model (``registry.model_name``) no other user logs
    to: test_mlflow_postgres.py its own names, test_multinode.py the defaults."""
    from tests.e2e.cluster_helpers import BIN, wait_until

    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", postgres_url, "--default-artifact-root", (root / "artifacts").as_uri()],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # own group: its workers stop with it
        # Job execution off: its job runner and 7 huey consumers (GenAI jobs, unused by aisys) took 1.7-1.9 GiB
        # instead of 0.5 GiB and 10.5-14.0 s to start instead of 8.3-8.9 s (2026-12-06, 2-core box); an idle
        # session-long server should not hold that.
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
             "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # A new database is migrated first (~10 s here).
        wait_until(lambda: proc.poll() is None and httpx.get(f"{url}/health", timeout=2).status_code == 200,
                   timeout=120, what=f"mlflow server (log: {root / 'server.log'})")
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> str:
    """``moto_server`` on a free port (in memory). One per session, not per module (0.7 s saved for test_s3.py,
    part of test_multinode.py's ~20 s: see above); stopped at the session's end. Users share ``BUCKET``: each
    keeps to a prefix of its own."""
    from tests.e2e.cluster_helpers import BIN, wait_until

    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(endpoint, timeout=2).status_code < 500, timeout=30, what="moto_server")
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
