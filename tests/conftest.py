"""Shared fixtures: a small, isolated AppConfig, one real local Ray per session, and one token-auth
`ray start --head` per session lent to the tests that drive a separate cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aisys.config import AppConfig, config_from_dict

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


def pytest_addoption(parser):
    parser.addoption("--schemathesis-full", action="store_true", default=False,
                     help="send the full 10,000+ Schemathesis requests (tests/reliability/test_schemathesis.py); "
                          "CI sends ~1,000 (benchmarks/chaos.py passes this flag)")


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


# The shared head is stopped as soon as the last test that needs it is done, not at session end: an idle head
# (GCS, raylet, dashboard and its agents) would otherwise hold memory and CPU through the rest of the suite.
_LAST_HEAD_USER = pytest.StashKey[pytest.Item]()
_SHARED_HEAD = pytest.StashKey[object]()


@pytest.fixture(scope="session")
def shared_token_head(request):
    """One `ray start --head` with RAY_AUTH_MODE=token for the session (``SharedTokenHead``): each user takes a
    lease (``token_head`` below, or ``shared_token_head.lease(name)`` in a module-scoped fixture), and every lease
    ends with the cluster reset (jobs stopped, Serve shut down, actors killed) or the head replaced."""
    from tests.e2e.cluster_helpers import SharedTokenHead

    session = request.session
    users = [item for item in session.items if "shared_token_head" in item.fixturenames]
    if users:
        session.stash[_LAST_HEAD_USER] = users[-1]
    head = SharedTokenHead()
    session.stash[_SHARED_HEAD] = head
    yield head
    head.close()


@pytest.fixture
def token_head(shared_token_head, request):
    """A lease of the session's token-auth head for one test: ``(dashboard_url, env, token)``."""
    with shared_token_head.lease(request.node.nodeid) as cluster:
        yield cluster


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        return (yield)
    finally:
        if item.session.stash.get(_LAST_HEAD_USER, None) is item:
            item.session.stash[_SHARED_HEAD].close()
