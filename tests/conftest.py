"""Shared fixtures: a small, isolated AppConfig and one real local Ray per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aisys.config import AppConfig, config_from_dict

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


def small_config_dict(root: Path) -> dict:
    """A config whose state lives under ``root`` and whose data and model are tiny."""
    return {
        "paths": {
            "workspace": str(root / "ws"),
            "lake_uri": str(root / "lake"),
            "mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "mlflow_artifact_uri": str(root / "mlartifacts"),
            "cache_dir": str(root / "cache"),
        },
        "ray": {"num_cpus": 2, "object_store_memory_mb": 512},
        "data": {
            "raw_dir": str(root / "raw"),
            "simulator": {"n_users": 120, "n_items": 80, "n_sessions": 900, "days": 10},
        },
        "features": {"max_seq_len": 20},
        "model": {"embedding_dim": 32, "n_layers": 1, "n_heads": 2},
        "train": {"epochs": 3, "batch_size": 64},
        "demo": {"n_events": 40, "n_requests": 40},
    }


@pytest.fixture
def small_config(tmp_path: Path) -> AppConfig:
    return config_from_dict(small_config_dict(tmp_path), "tests")


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray for the whole session: 2 CPUs, a 512 MiB object store, no dashboard."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            object_store_memory=512 * 1024 * 1024,
            include_dashboard=False,
            logging_level="WARNING",
        )
    yield ray
    ray.shutdown()
