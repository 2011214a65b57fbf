"""What the storefront and the operator view read in a replica: catalogue, page key, overview.

Thin adapters over the lake, the gateway's key files, the serving service and
the drift monitor actor; the pages themselves are in :mod:`aisys.storefront.routes`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aisys.config import AppConfig
from aisys.storefront.catalogue import Catalogue, build_catalogue

if TYPE_CHECKING:
    from aisys.serving.service import OnlineService

logger = logging.getLogger(__name__)

STOREFRONT_KEY_ENV = "AISYS_STOREFRONT_KEY"
MONITOR_TIMEOUT_S = 2.0


def load_catalogue(cfg: AppConfig, snapshot_id: str | None) -> Catalogue:
    """The catalogue of a lake snapshot (the latest when ``snapshot_id`` is None); empty without one."""
    from aisys.data.lake import Lake

    lake = Lake.from_config(cfg.paths)
    snapshot_id = snapshot_id or getattr(lake.latest(), "snapshot_id", None)
    if snapshot_id is None:
        return Catalogue()
    return build_catalogue(lake.read_events(snapshot_id))


def storefront_key(cfg: AppConfig) -> str | None:
    """The publishable storefront-scope key the page embeds.

    ``$AISYS_STOREFRONT_KEY`` in a deployment; the local dev key
    (``<workspace>/dev-keys.json``) on a laptop; None when auth is off.
    """
    if not cfg.gateway.auth:
        return None
    if os.environ.get(STOREFRONT_KEY_ENV):
        return os.environ[STOREFRONT_KEY_ENV]
    from aisys.gateway import read_dev_keys

    return read_dev_keys(cfg).get("dev-storefront")


async def monitor_status(cfg: AppConfig) -> dict[str, Any] | None:
    """The drift monitor's ``status()`` when its actor runs in this Ray, else None (never creates it)."""
    try:
        import ray

        from aisys.monitoring.monitor_actor import NAMESPACE, monitor_actor_name

        if not ray.is_initialized():
            return None
        handle = ray.get_actor(monitor_actor_name(cfg), namespace=NAMESPACE)
        return await asyncio.wait_for(handle.status.remote(), MONITOR_TIMEOUT_S)
    except (ValueError, asyncio.TimeoutError):
        return None
    except Exception as err:  # the operator view must render even when the monitor is sick
        logger.warning("monitor status unavailable: %s", err)
        return None


def latest_report_path(status: dict[str, Any] | None) -> Path | None:
    """The newest Evidently report the monitor wrote, when it is a local file."""
    report = (status or {}).get("last_report") or {}
    path = report.get("path")
    return Path(path) if path and "://" not in path and Path(path).exists() else None


async def overview(cfg: AppConfig, service: "OnlineService") -> dict[str, Any]:
    """The operator view's data: both arms with lineage, retrain decisions, drift, links."""
    from aisys.serving.canary import CHALLENGER, CHAMPION

    models = service.models
    status = await monitor_status(cfg)
    stats = (status or {}).get("latest_stats") or {}
    decisions = [
        {"time": d.get("at"), "decision": d.get("outcome") or ("retrain" if d.get("retrain") else "none"),
         "reasons": list(d.get("reasons") or []) + [f"blocked: {b}" for b in d.get("blocked_by") or []]}
        for d in reversed((status or {}).get("decisions") or [])
    ]
    links = {
        "Latest drift report (Evidently)": "/admin/reports/drift/latest" if latest_report_path(status) else None,
        "MLflow UI": cfg.serve.mlflow_ui_url,
        "Ray dashboard": cfg.serve.ray_dashboard_url,
    }
    return {
        "models": {
            arm: (models[arm].info.model_dump(mode="json") if arm in models else None)
            for arm in (CHAMPION, CHALLENGER)
        },
        "canary_share": cfg.online.canary_share,
        "health": service.health().model_dump(mode="json"),
        "decisions": decisions,
        "drift": {
            "threshold": cfg.monitor.psi_threshold,
            "stats": {name: s.get("psi") for name, s in stats.items() if s.get("psi") is not None},
            "monitor": status is not None,
        },
        "links": links,
    }
