"""Deployment options come from ``cfg.serve`` (building the application starts no Ray)."""

from __future__ import annotations

import pytest

from aisys.config import AppConfig
from aisys.serving.app import build_application

pytestmark = pytest.mark.ray


def deployment_config(cfg: AppConfig):
    return build_application(cfg)._bound_deployment._deployment_config


def test_queue_and_concurrency_bounds_come_from_the_config():
    cfg = AppConfig()
    assert deployment_config(cfg).max_queued_requests == -1  # Serve's default: unbounded
    cfg.serve.max_queued_requests = 100
    cfg.serve.max_ongoing_requests = 32
    config = deployment_config(cfg)
    assert (config.max_queued_requests, config.max_ongoing_requests) == (100, 32)


def test_autoscaling_replaces_a_fixed_replica_count():
    cfg = AppConfig()
    cfg.serve.autoscaling, cfg.serve.min_replicas, cfg.serve.max_replicas = True, 1, 3
    config = deployment_config(cfg)
    assert config.autoscaling_config.min_replicas == 1 and config.autoscaling_config.max_replicas == 3
