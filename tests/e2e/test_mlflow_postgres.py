"""MLflow as a tracking server on PostgreSQL: a private Postgres cluster (initdb/pg_ctl on a free port), `mlflow
server --backend-store-uri postgresql+psycopg2://...`, then the registry code over HTTP.

What it proves: `log_and_register`, the champion alias and `load_bundle` work against a tracking *server* (not a
SQLite file), and the run, the version and the alias land in PostgreSQL's tables (read back with psycopg2).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from aisys.config import config_from_dict
from tests.conftest import small_config_dict
from tests.e2e.cluster_helpers import BIN, free_port, tiny_events, train_tiny_champion, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL server binaries (``/usr/lib/postgresql/<major>/bin``), if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def as_postgres(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: run them as the `postgres` user when we are root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port> with a database ``mlflow``; stopped afterwards."""
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


def _tail(path: Path) -> str:
    return path.read_text()[-2000:] if path.exists() else ""


@pytest.fixture(scope="module")
def mlflow_server(postgres_url, tmp_path_factory):
    """`mlflow server --workers 1` on the Postgres store; yields its URL. Its process group is stopped afterwards."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", postgres_url, "--default-artifact-root", (root / "artifacts").as_uri()],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # own group: its workers stop with it
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"},
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


def test_register_alias_and_load_through_a_postgres_backed_server(mlflow_server, postgres_url, tmp_path):
    import psycopg2

    from aisys.registry.mlflow_registry import get_model_info, load_bundle

    data = small_config_dict(tmp_path)
    data["paths"]["mlflow_tracking_uri"] = mlflow_server
    cfg = config_from_dict(data, "test_mlflow_postgres")
    events = tiny_events()

    registered = train_tiny_champion(cfg, events, "pg-snapshot", epochs=1)

    bundle, info = load_bundle(cfg, alias=cfg.registry.champion_alias)
    assert info["version"] == registered.version == "1"
    assert info["run_id"] == registered.run_id == bundle.lineage["run_id"]
    assert info["snapshot_id"] == "pg-snapshot"
    assert get_model_info(cfg, cfg.registry.champion_alias)["aliases"] == [cfg.registry.champion_alias]
    # The facts are rows in PostgreSQL, not in a local file.
    dsn = postgres_url.replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_uuid FROM runs")
        assert [row[0] for row in cur.fetchall()] == [registered.run_id]
        cur.execute("SELECT name, alias, version FROM registered_model_aliases")
        assert cur.fetchall() == [(cfg.registry.model_name, cfg.registry.champion_alias, 1)]
    assert not list(tmp_path.glob("**/*.db"))  # no SQLite store was created on the side
