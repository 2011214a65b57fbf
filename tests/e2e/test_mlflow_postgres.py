"""MLflow as a tracking server on PostgreSQL: a private Postgres cluster (initdb/pg_ctl on a free port), `mlflow
server --backend-store-uri postgresql+psycopg2://...` (the session's ``postgres_url`` and ``mlflow_server``,
tests/e2e/conftest.py), then the registry code over HTTP.

What it proves: `log_and_register`, the champion alias and `load_bundle` work against a tracking *server* (not a
SQLite file), and the run, the version and the alias land in PostgreSQL's tables (read back with psycopg2).
"""

from __future__ import annotations

import pytest

from aisys.config import config_from_dict
from tests.conftest import small_config_dict
from tests.e2e.cluster_helpers import tiny_events, train_tiny_champion

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_register_alias_and_load_through_a_postgres_backed_server(mlflow_server, postgres_url, tmp_path):
    import psycopg2

    from aisys.registry.mlflow_registry import get_model_info, load_bundle

    data = small_config_dict(tmp_path)
    data["paths"]["mlflow_tracking_uri"] = mlflow_server
    # The session's server is shared (test_multinode.py trains on it too): an experiment and a model of our own,
    # so the version is ours alone and the rows below are read back by those names.
    data["train"]["experiment"] = "test-mlflow-postgres"
    data["registry"] = {"model_name": "test-mlflow-postgres"}
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
        cur.execute("SELECT r.run_uuid FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                    "WHERE e.name = %s", (cfg.train.experiment,))
        assert [row[0] for row in cur.fetchall()] == [registered.run_id]
        cur.execute("SELECT name, alias, version FROM registered_model_aliases WHERE name = %s",
                    (cfg.registry.model_name,))
        assert cur.fetchall() == [(cfg.registry.model_name, cfg.registry.champion_alias, 1)]
    assert not list(tmp_path.glob("**/*.db"))  # no SQLite store was created on the side
