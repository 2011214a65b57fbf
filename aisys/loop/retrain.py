"""Retrain behind the gate: a lake snapshot's window -> a new registered version -> the gate -> maybe champion.

:func:`retrain` is the one step the closed loop runs when the monitor asks for it (and what
``jobs/retrain.py`` runs under ``ray job submit``):

1. read a lake snapshot (latest by default) and keep its last ``cfg.monitor.train_window_days`` days
   (:func:`window_events`, pure);
2. train and register a version **without** an alias (:func:`aisys.pipeline.train_and_register`,
   ``promote=False``);
3. tag the training run and the new version with the lineage: why (``aisys.retrain_reason``), what
   triggered it (``aisys.trigger``), the snapshot and window, and the champion it was trained to replace
   (``aisys.parent_champion``);
4. gate it against the champion on the same snapshot's holdout
   (:func:`aisys.registry.promotion.promote`: an MLflow decision run, the alias flips only on promote);
5. on promote, profile the training window as the new drift reference, store it in the lake and hand it
   to the workspace's monitor actor (``set_reference``), so drift is measured against what now serves.

Replicas follow the champion alias on their own (``cfg.online.follow_alias_every_s``): nothing here
talks to Serve.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from aisys.config import AppConfig
from aisys.registry.interface import ModelRegistry

REASON_TAG = "aisys.retrain_reason"
TRIGGER_TAG = "aisys.trigger"
PARENT_TAG = "aisys.parent_champion"
WINDOW_TAG = "aisys.train_window_days"
TRAIN_EVENTS_TAG = "aisys.train_events"
PROFILE_TAG = "aisys.reference_profile"


@dataclass
class RetrainOutcome:
    """What one retrain did: the version it registered, the gate's verdict, and where it is recorded."""

    snapshot_id: str
    new_version: str
    champion_before: str | None
    promoted: bool
    reasons: list[str]  # the gate's sentences (why promoted or refused)
    train_run_id: str
    gate_run_id: str
    train_events: int  # rows in the training window
    window_days: int | None
    reason: str
    trigger: str
    metrics: dict[str, float] = field(default_factory=dict)  # the new version's test metrics
    reference_updated: bool = False  # the monitor got the new reference profile
    profile_path: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # read, train, gate, reference, total

    @property
    def champion_after(self) -> str | None:
        return self.new_version if self.promoted else self.champion_before

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what ``jobs/retrain.py`` prints)."""
        return {**asdict(self), "champion_after": self.champion_after}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RetrainOutcome":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def window_events(events: pa.Table, days: int | None) -> pa.Table:
    """The rows of ``events`` in the last ``days`` days before its newest timestamp (all rows for None).

    The window ends at the data's own newest event, not at "now": a replay or a late ingest trains on the
    same rows whenever it runs. Same rule as the monitor's reference (``read_reference_events``), so the
    drift reference describes exactly what the model was trained on.
    """
    if days is None or events.num_rows == 0:
        return events
    if days < 1:
        raise ValueError(f"train window must be at least 1 day, got days={days}")
    newest = pc.max(events.column("timestamp")).as_py()
    return events.filter(pc.greater(events.column("timestamp"), pa.scalar(newest - timedelta(days=days),
                                                                           events.schema.field("timestamp").type)))


def describe_request(request: dict[str, Any] | None) -> tuple[str, str]:
    """``(reason, trigger)`` of a monitor retrain request (``Decision.to_dict()``); manual when None."""
    if not request:
        return "manual retrain", "manual"
    triggers = ",".join(request.get("triggers") or []) or "unknown"
    reason = "; ".join(request.get("reasons") or []) or f"monitor decision at {request.get('at')}"
    return reason, triggers


def retrain(
    cfg: AppConfig,
    snapshot_id: str | None = None,
    reason: str = "",
    trigger: str = "manual",
    monitor: Any = "auto",
    registry: ModelRegistry | None = None,
) -> RetrainOutcome:
    """Train on a snapshot's window, register without an alias, gate it, and on promote update the monitor.

    ``monitor``: ``"auto"`` finds the workspace's monitor actor if one runs (none is fine); a Ray actor
    handle or an in-process :class:`~aisys.monitoring.monitor_actor.DriftMonitor` is used as given;
    ``None`` leaves the monitor alone. ``registry``: where the version is registered and tagged and the
    champion read (default: MLflow, :class:`~aisys.registry.mlflow_registry.MlflowRegistry`); the gate
    (:func:`aisys.registry.promotion.promote`) still records its decision run in MLflow. See the module
    docstring for the steps.
    """
    from aisys.data.lake import Lake
    from aisys.pipeline import train_and_register
    from aisys.registry.promotion import GATE_DECISION_TAG, GATE_RUN_TAG, promote
    from aisys.runtime import init_ray

    if registry is None:
        from aisys.registry.mlflow_registry import MlflowRegistry

        registry = MlflowRegistry(cfg)

    started = time.perf_counter()
    seconds: dict[str, float] = {}
    lake = Lake.from_config(cfg.paths)
    manifest = lake.get(snapshot_id) if snapshot_id else lake.latest()
    if manifest is None:
        raise FileNotFoundError(f"the lake at {cfg.paths.lake_uri} has no snapshot to retrain on: ingest first")
    days = cfg.monitor.train_window_days
    events = window_events(lake.read_events(manifest.snapshot_id), days)
    if events.num_rows == 0:
        raise ValueError(f"snapshot {manifest.snapshot_id!r} has no events in its last {days} day(s)")
    parent = champion_version(registry, cfg.registry.champion_alias)
    seconds["read"] = time.perf_counter() - started

    t0 = time.perf_counter()
    init_ray(cfg)
    trained = train_and_register(cfg, events, manifest.snapshot_id, promote=False, registry=registry)
    seconds["train"] = time.perf_counter() - t0
    reason = reason or "manual retrain"
    lineage = {
        REASON_TAG: reason,
        TRIGGER_TAG: trigger,
        PARENT_TAG: parent or "none",
        WINDOW_TAG: str(days) if days else "all",
        TRAIN_EVENTS_TAG: str(events.num_rows),
    }
    registry.tag_version(trained.model_version, lineage, [trained.run_id])

    t0 = time.perf_counter()
    gated = promote(cfg, version=trained.model_version, snapshot_id=manifest.snapshot_id)
    seconds["gate"] = time.perf_counter() - t0
    decision = "promote" if gated.promoted else "refuse"
    registry.tag_version(trained.model_version, {**lineage, GATE_RUN_TAG: gated.run_id, GATE_DECISION_TAG: decision},
                         [gated.run_id])

    outcome = RetrainOutcome(
        snapshot_id=manifest.snapshot_id,
        new_version=trained.model_version,
        champion_before=gated.champion_version,
        promoted=gated.promoted,
        reasons=list(gated.decision.reasons),
        train_run_id=trained.run_id,
        gate_run_id=gated.run_id,
        train_events=events.num_rows,
        window_days=days,
        reason=reason,
        trigger=trigger,
        metrics={k: float(v) for k, v in trained.metrics.items()},
    )
    if gated.promoted:
        t0 = time.perf_counter()
        outcome.profile_path, outcome.reference_updated = _hand_over_reference(
            cfg, events, manifest.snapshot_id, trained.model_version, monitor
        )
        if outcome.profile_path:
            registry.tag_version(trained.model_version, {PROFILE_TAG: outcome.profile_path})
        seconds["reference"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    outcome.seconds = {k: round(v, 3) for k, v in seconds.items()}
    return outcome


def champion_version(registry: ModelRegistry, alias: str = "champion") -> str | None:
    """The version behind ``alias``; None when there is no alias or no registered model yet."""
    try:
        return registry.model_info(alias)["version"]
    except LookupError:
        return None


def _hand_over_reference(
    cfg: AppConfig, events: pa.Table, snapshot_id: str, version: str, monitor: Any
) -> tuple[str | None, bool]:
    """Profile the training window as the new drift reference, store it, and give it to the monitor.

    Returns ``(profile path, monitor updated)``. A monitor that cannot take it is not an error of the
    retrain (the model is already champion): the profile stays in the lake for the next monitor.
    """
    from aisys.monitoring.profile import build_profile, write_profile

    frame = events.to_pandas()
    profile = build_profile(
        frame,
        snapshot_id=snapshot_id,
        model_version=version,
        n_bins=cfg.monitor.profile_bins,
        activity_window_events=cfg.monitor.window_events,
    )
    path = write_profile(cfg.paths.lake_uri, profile, cfg.paths)
    handle = find_monitor(cfg) if isinstance(monitor, str) and monitor == "auto" else monitor
    if handle is None:
        return path, False
    # The monitor's Evidently report needs reference rows: its window's worth of the newest training rows.
    sample = frame.sort_values("timestamp", kind="stable").tail(cfg.monitor.window_events).reset_index(drop=True)
    setter = handle.set_reference
    if hasattr(setter, "remote"):
        import ray

        ray.get(setter.remote(profile, sample))
    else:
        setter(profile, sample)
    return path, True


def find_monitor(cfg: AppConfig):
    """The workspace's monitor actor if it runs (never creates one); None otherwise or without Ray."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    from aisys.monitoring.monitor_actor import NAMESPACE, monitor_actor_name

    try:
        return ray.get_actor(monitor_actor_name(cfg), namespace=NAMESPACE)
    except ValueError:
        return None
