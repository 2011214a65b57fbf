"""The operator view's data in a replica: both arms, retrain decisions, drift over time, UI links.

Thin adapters over the serving service, the drift monitor actor, the retrain audit log in the lake and the
registry's runs; the shaping is pure (:mod:`aisys.storefront.opsdata`) and the page is the storefront's
(:mod:`aisys.storefront.routes`, handed :func:`overview` as a callable by :mod:`aisys.serving.deployment`).
Serving owns this view because it reads serving's own state: the pages never import serving.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aisys.config import AppConfig

if TYPE_CHECKING:
    from aisys.serving.service import OnlineService

logger = logging.getLogger(__name__)

MONITOR_TIMEOUT_S = 2.0
REGISTRY_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 1.0
# Registry run id -> its metrics. A finished run's metrics never change, so one read per run
# per replica is enough (the operator view polls).
_RUN_METRICS: dict[str, dict[str, float]] = {}


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


def _audit_records(cfg: AppConfig) -> list[dict[str, Any]]:
    """Every retrain decision the policy wrote to the lake's audit log (all monitors, all restarts)."""
    from aisys.monitoring.audit import ParquetAuditLog

    import numpy as np

    rows = ParquetAuditLog(cfg.paths.lake_uri).read().to_dict("records")
    # List columns come back from pandas as arrays; the shaping code expects lists.
    return [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items()} for row in rows]


async def _run_metrics(cfg: AppConfig, run_id: str | None) -> dict[str, float]:
    """The registry run's metrics (cached: a finished run's metrics do not change); {} when unreadable."""
    if not run_id:
        return {}
    if run_id not in _RUN_METRICS:
        from aisys.registry.mlflow_registry import run_metrics

        try:
            _RUN_METRICS[run_id] = await asyncio.wait_for(asyncio.to_thread(run_metrics, cfg, run_id), REGISTRY_TIMEOUT_S)
        except Exception as err:  # the view must render while the registry is down; say so in the log
            logger.warning("registry metrics of run %s unavailable: %s", run_id, err)
            return {}
    return _RUN_METRICS[run_id]


async def probe(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[bool, str | None]:
    """Whether ``url`` answers with a status below 500, and why not."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=True) as client:
            response = await client.get(url)
    except httpx.HTTPError as err:
        return False, type(err).__name__
    return (True, None) if response.status_code < 500 else (False, f"HTTP {response.status_code}")


async def operator_links(cfg: AppConfig, status: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The UIs an operator wants, each checked now: a link when it answers, a reason when not."""
    from aisys.storefront.opsdata import link_row

    wanted = [
        ("Ray dashboard", cfg.serve.ray_dashboard_url, "serve.ray_dashboard_url"),
        ("MLflow UI", cfg.serve.mlflow_ui_url, "serve.mlflow_ui_url"),
        ("Grafana", cfg.serve.grafana_url, "serve.grafana_url"),
    ]
    answers = await asyncio.gather(*(probe(url) if url else _absent() for _, url, _ in wanted))
    rows = [link_row(name, url, ok, why, setting) for (name, url, setting), (ok, why) in zip(wanted, answers)]
    report = latest_report_path(status)
    rows.append({"name": "Latest drift report (Evidently)", "href": "/admin/reports/drift/latest" if report else None,
                 "url": None, "ok": report is not None,
                 "reason": None if report else "no report yet: the drift monitor writes one on drift or on schedule"})
    return rows


async def _absent() -> tuple[bool, str | None]:
    return False, None


async def overview(cfg: AppConfig, service: "OnlineService") -> dict[str, Any]:
    """The operator view's data: both arms with lineage and offline metrics, retrain decisions,
    drift over time, UI links (traffic is added by the route, which owns the request window)."""
    from aisys.serving.canary import CHALLENGER, CHAMPION
    from aisys.storefront.opsdata import decision_rows, drift_chart_svg, drift_series, drift_summary, offline_metrics
    from aisys.storefront.images import svg_data_uri

    models = service.models
    status = await monitor_status(cfg)
    stats = (status or {}).get("latest_stats") or {}
    try:
        records = await asyncio.to_thread(_audit_records, cfg)
    except Exception as err:  # an unreadable lake must not blank the whole view
        logger.warning("retrain audit log unreadable: %s", err)
        records = []
    # The audit table in the lake is the record of every decision (the loop writes it; the monitor decides nothing).
    threshold = cfg.monitor.psi_threshold
    series = drift_series(records)
    described = {}
    for arm in (CHAMPION, CHALLENGER):
        if arm not in models:
            described[arm] = None
            continue
        info = models[arm].info.model_dump(mode="json")
        info["metrics"] = offline_metrics(info.get("metrics"), await _run_metrics(cfg, info.get("run_id")))
        described[arm] = info
    return {
        "models": described,
        "canary_share": cfg.online.canary_share,
        "health": service.health().model_dump(mode="json"),
        "decisions": decision_rows(records),
        "drift": {
            "threshold": threshold,
            "stats": {name: s.get("psi") for name, s in stats.items() if s.get("psi") is not None}
            or (series[-1]["psi"] if series else {}),
            "series": series,
            "chart": svg_data_uri(drift_chart_svg(series, threshold)) if series else None,
            "summary": drift_summary(series, threshold),
            "monitor": status is not None,
        },
        "links": await operator_links(cfg, status),
    }
