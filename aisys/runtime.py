"""Starting and reaching Ray with bounded resources.

A local Ray is started with explicit CPUs and a bounded object store (a
default ``ray.init`` reserves ~30% of RAM and starts ~22 processes). On a
cluster, ``ray.address: auto`` joins it instead.
"""

from __future__ import annotations

import os
from typing import Any

from aisys.config import AppConfig

# Set before Ray or MLflow start so no process phones home (the machines here
# are offline, and a blocked call only adds latency).
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_DEDUP_LOGS": "1",
}


def quiet_environment() -> None:
    """Turn telemetry off for this process and every process it starts."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def init_ray(cfg: AppConfig, **extra: Any):
    """Connect to Ray as the config says; a no-op if Ray is already up.

    Returns the ``ray`` module so callers need not import it at module level.
    """
    import ray

    quiet_environment()
    if ray.is_initialized():
        return ray
    # Inside `ray job submit` Ray sets RAY_ADDRESS: join that cluster rather
    # than starting a private one (num_cpus is not allowed when joining).
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **extra)
    else:
        # A private Ray owned by this process tree and torn down with it: token
        # auth is for shared clusters (`ray start`, KubeRay); see docs/operations.md.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(
            num_cpus=cfg.ray.num_cpus,
            num_gpus=cfg.ray.num_gpus,
            object_store_memory=cfg.ray.object_store_memory_mb * 1024 * 1024,
            include_dashboard=cfg.ray.include_dashboard,
            configure_logging=True,
            logging_level="WARNING",
            **extra,
        )
    return ray
