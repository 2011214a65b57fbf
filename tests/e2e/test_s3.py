"""The lake and MLflow's artifacts on ``s3://``, against a local S3-compatible server (moto in server mode).

What it proves: with ``paths.s3_endpoint_url`` set, every lake reader and writer (snapshots and a rebased
commit race, profiles, drift reports, the audit log, a sweep and the gate's holdout) reaches the configured
endpoint, and their objects are found in ``s3://bucket/...`` (listed with boto3, not through the code under
test); a model logged with ``paths.mlflow_artifact_uri: s3://bucket/mlartifacts`` puts its artifacts in the
bucket and loads back by alias. Nothing but the endpoint in the config tells either library where S3 is.

The ingest job writing a snapshot to S3 (with broken and duplicated rows; counts, quarantine and read-back
checked) is covered in test_multinode.py, as a job on a cluster whose nodes carry the credentials.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from aisys.config import config_from_dict
from aisys.data.lake import Lake
from tests.conftest import seed_mlflow_db, small_config_dict
from tests.e2e.cluster_helpers import commit_events, tiny_events, train_tiny_champion
from tests.e2e.conftest import BUCKET

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """AWS credentials for the session's S3 server (``s3_endpoint``), ``BUCKET`` (made by its first user), and a
    boto3 client to inspect it. Each test keeps to its own prefix of the shared bucket."""
    import boto3

    # moto accepts any credentials; boto3 (MLflow's artifact client) refuses to sign without some.
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    # configure_mlflow sets this from the config; start without it and restore "unset" afterwards.
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=BUCKET)
    return client


def s3_config(tmp_path: Path, endpoint: str, prefix: str, mlflow_db_template: Path | None = None):
    """Lake and MLflow artifacts under ``s3://BUCKET/<prefix>/``; the tracking DB stays local (a migrated empty
    copy of ``mlflow_db_template`` when given: tests that register a model)."""
    if mlflow_db_template is not None:
        seed_mlflow_db(mlflow_db_template, tmp_path / "mlflow.db")  # small_config_dict's tracking URI
    data = small_config_dict(tmp_path)
    data["paths"].update(lake_uri=f"s3://{BUCKET}/{prefix}/lake", mlflow_artifact_uri=f"s3://{BUCKET}/{prefix}/mlartifacts",
                         s3_endpoint_url=endpoint)
    return config_from_dict(data, "test_s3")


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def test_mlflow_artifacts_on_s3_register_and_load_by_alias(s3, s3_endpoint, tmp_path, mlflow_db_template):
    from aisys.features.sequences import build_vocabulary
    from aisys.registry.mlflow_registry import load_bundle

    cfg = s3_config(tmp_path, s3_endpoint, "registry", mlflow_db_template)
    events = tiny_events()
    lake = Lake.from_config(cfg.paths)
    snapshot_id = commit_events(lake, events)
    registered = train_tiny_champion(cfg, lake.read_events(snapshot_id), snapshot_id, epochs=1)

    stored = keys(s3, "registry/mlartifacts/")
    assert any("/artifacts/bundle/" in k for k in stored), stored[:20]  # the model's bundle, in the bucket
    assert not (tmp_path / "mlartifacts").exists() and not (tmp_path / "ws" / "mlartifacts").exists()

    bundle, info = load_bundle(cfg, alias=cfg.registry.champion_alias)
    assert info["version"] == registered.version == "1"
    assert info["snapshot_id"] == snapshot_id
    assert bundle.item_ids == build_vocabulary(events, cfg.features.event_weights).item_ids
    assert bundle.lineage["run_id"] == registered.run_id


def test_every_lake_reader_and_writer_reaches_the_s3_endpoint(s3, s3_endpoint, tmp_path, ray_session,
                                                              mlflow_db_template):
    """Snapshots, concurrent commits, profiles, drift reports, the audit log, the gate's holdout and a sweep all
    open the lake with the configured endpoint: were any of them to look on AWS instead, it would fail here
    (no AWS is reachable), and every object they write is found in the test bucket."""
    from dataclasses import replace

    from aisys.data.lake import ConcurrentCommitError, Manifest, new_snapshot_id
    from aisys.data.lake_commit import commit_with_rebase
    from aisys.monitoring.evidently_report import report_frame, write_drift_report
    from aisys.monitoring.audit import ParquetAuditLog
    from aisys.monitoring.profile import profile_from_lake, read_profile, read_reference_events, write_profile
    from aisys.registry.promotion import promote
    from aisys.tuning.sweep import run_sweep

    cfg = s3_config(tmp_path, s3_endpoint, "readers", mlflow_db_template)
    lake = Lake.from_config(cfg.paths)
    events = tiny_events()
    first = commit_events(lake, events.slice(0, events.num_rows - 200))

    # Snapshots, and a lost commit race rebased on S3 (the parent check is a read before the write there).
    rest = events.slice(events.num_rows - 200)
    parent = lake.get(first)
    prepared = []
    for part in (rest.slice(0, 120), rest.slice(80)):  # 40 rows in both
        sid = new_snapshot_id()
        files = [f for f, _ in lake.write_event_files(part, sid)]
        counts = dict(parent.counts) | {"input": part.num_rows, "clean": part.num_rows, "written": part.num_rows,
                                        "duplicates_in_lake": 0, "total_rows": parent.counts["total_rows"] + part.num_rows}
        prepared.append(Manifest(snapshot_id=sid, parent_id=first, created_at="2026-01-01T00:00:00Z", source="t",
                                 schema_hash=parent.schema_hash, counts=counts, files=parent.files + files))
    lake.commit(prepared[0])
    with pytest.raises(ConcurrentCommitError):
        lake.commit(replace(prepared[1]))
    landed = commit_with_rebase(lake, prepared[1])
    assert [m.snapshot_id for m in lake.list_snapshots()] == [first, prepared[0].snapshot_id, landed.snapshot_id]
    table = lake.read_events()
    assert table.num_rows == events.num_rows == len(set(table.column("event_id").to_pylist()))
    assert landed.counts["duplicates_in_lake"] == 40
    assert f"readers/lake/events/_manifests/{landed.snapshot_id}.json" in keys(s3, "readers/lake/events/_manifests/")

    # Profiles: read the snapshot from S3, store the profile there, read it back.
    assert len(read_reference_events(cfg)) > 0
    profile = profile_from_lake(cfg)
    location = write_profile(cfg.paths.lake_uri, profile, cfg.paths)
    assert location.startswith(f"s3://{BUCKET}/readers/lake/monitoring/profiles/")
    assert read_profile(location, cfg.paths).snapshot_id == profile.snapshot_id == landed.snapshot_id

    # The Evidently drift report and the retrain audit log.
    frame = read_reference_events(cfg)
    report = write_drift_report(cfg.paths.lake_uri, report_frame(frame.iloc[:300], profile),
                                report_frame(frame.iloc[300:], profile), paths=cfg.paths)
    assert report.path.startswith(f"s3://{BUCKET}/readers/lake/reports/drift/")
    audit = ParquetAuditLog(cfg.paths.lake_uri, cfg.paths)
    audit.append({"at": datetime(2026, 12, 4, tzinfo=timezone.utc), "model_version": "1", "retrain": False,
                  "outcome": "no_trigger", "triggers": [], "reasons": ["test"], "blocked_by": [], "inputs": "{}"})
    assert len(audit.read()) == 1
    stored = keys(s3, "readers/lake/")
    assert any(k.startswith("readers/lake/reports/drift/") for k in stored)
    assert any(k.startswith("readers/lake/monitoring/retrain_audit/") for k in stored)
    assert not list(tmp_path.glob("**/retrain_audit")) and not list(tmp_path.glob("**/profiles"))

    # A sweep reads its snapshot from the S3 lake and registers the challenger; the gate then builds its
    # holdout from the S3 lake to compare it with the champion.
    champion = train_tiny_champion(cfg, lake.read_events(), landed.snapshot_id, epochs=1)
    cfg.tune.num_samples, cfg.tune.max_epochs, cfg.tune.grace_period = 1, 1, 1
    cfg.tune.embedding_dim, cfg.tune.n_layers, cfg.tune.max_seq_len = [16], [1], [10]
    swept = run_sweep(cfg, verbose=0)
    assert len(swept.trials) == 1
    outcome = promote(cfg)
    assert outcome.candidate_version == swept.model_version and outcome.champion_version == champion.version
    assert outcome.candidate is not None and outcome.champion is not None  # both evaluated on the S3 holdout
