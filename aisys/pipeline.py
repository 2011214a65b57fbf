"""Stage compositions shared by the CLI, the demo, the `jobs/` entrypoints and the retrain loop.

Each function takes the one :class:`AppConfig` and calls the stage modules; the
entrypoints stay a few lines long and behave the same on a laptop and under
``ray job submit``. Stages never call each other across a hand-off: training
returns a trained model and :func:`train_and_register` hands it to the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from aisys.config import AppConfig
from aisys.registry.interface import ModelRegistry


def source_events(cfg: AppConfig) -> pa.Table:
    """Events from the configured source (the shop simulator or MovieLens-100K)."""
    if cfg.data.source == "movielens":
        from aisys.data.movielens import load_movielens

        return load_movielens(cfg.data.movielens, cfg.paths.cache_dir)
    from aisys.data.simulator import simulate_events

    return simulate_events(cfg.data.simulator)


def raw_events_path(cfg: AppConfig, name: str = "events") -> Path:
    """Default raw file path for the configured source and format."""
    return Path(cfg.data.raw_dir) / f"{cfg.data.source}-{name}.{cfg.data.raw_format}"


def generate_raw_events(
    cfg: AppConfig,
    out: str | Path | None = None,
    bad_share: float = 0.0,
    duplicate_share: float = 0.0,
    table: pa.Table | None = None,
):
    """Write the source's events (or ``table``) as a raw event file, optionally with injected faults."""
    from aisys.data.raw_files import write_raw_events

    events = source_events(cfg) if table is None else table
    if table is None:
        # The shop's product table (names, brands, prices) goes beside the lake's snapshots.
        from aisys.data.products import publish_source_products

        publish_source_products(cfg)
    path = Path(out) if out else raw_events_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".") or cfg.data.raw_format
    return write_raw_events(
        events, path, fmt=fmt, bad_share=bad_share, duplicate_share=duplicate_share, seed=cfg.data.simulator.seed
    )


def ingest(
    cfg: AppConfig,
    paths: list[str],
    source: str | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
):
    """Ingest raw event files into a new lake snapshot (starts Ray if needed).

    ``on_progress(phase, done, total)`` follows the phases (:func:`aisys.data.ingest.ingest_files`).
    """
    from aisys.data.ingest import ingest_files
    from aisys.runtime import init_ray

    init_ray(cfg)
    return ingest_files(cfg, paths, source=source, on_progress=on_progress)


@dataclass
class TrainOutcome:
    """A trained, registered model: its bundle, test metrics, baseline and registry coordinates."""

    bundle: Any  # the ModelBundle that was registered
    metrics: dict[str, float]  # the model (its scorer) on the test split (hr@10, ndcg@10, mrr@10, coverage@10, ...)
    baseline_metrics: dict[str, float]  # popularity on the same users
    history: list[dict] = field(default_factory=list)  # per-epoch loss and validation metrics
    run_id: str = ""
    model_name: str = ""
    model_version: str = ""
    # The gate's verdict on this version (a PromotionOutcome) when it was gated after training
    # (train_from_lake); None when nobody did.
    promotion: Any = None

    @property
    def promoted(self) -> bool | None:
        """Whether the gate made this version champion (None: not gated)."""
        return None if self.promotion is None else bool(self.promotion.promoted)


def train_and_register(
    cfg: AppConfig,
    events: pa.Table,
    snapshot_id: str,
    promote: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_step: Callable[[str], None] | None = None,
    registry: ModelRegistry | None = None,
) -> TrainOutcome:
    """Train on ``events`` (lake snapshot ``snapshot_id``; :func:`aisys.training.pipeline.train_model`) and
    register the model with its run in ``registry`` (a :class:`~aisys.registry.interface.ModelRegistry`;
    default the config's MLflow registry).

    With ``promote`` the new version takes ``cfg.registry.champion_alias`` directly, with no gate (tests and
    benchmarks that need a champion in one call); without, it is registered with no alias and a gate decides
    (``aisys train``, the retrain loop). ``on_epoch``/``on_step`` follow the run (``on_step`` gets ``train``,
    ``evaluate``, ``register``).
    """
    from aisys.training.pipeline import train_model

    if registry is None:
        from aisys.registry.mlflow_registry import MlflowRegistry

        registry = MlflowRegistry(cfg)
    trained = train_model(cfg, events, snapshot_id, on_epoch=on_epoch, on_step=on_step)
    if on_step is not None:
        on_step("register")
    registered = registry.log_and_register(
        trained.bundle, trained.params, trained.logged, trained.history, snapshot_id,
        alias=cfg.registry.champion_alias if promote else None,
    )
    return TrainOutcome(
        bundle=trained.bundle,
        metrics=trained.metrics,
        baseline_metrics=trained.baseline_metrics,
        history=trained.history,
        run_id=registered.run_id,
        model_name=registered.name,
        model_version=registered.version,
    )


def train_from_lake(
    cfg: AppConfig,
    snapshot_id: str | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_step: Callable[[str], None] | None = None,
    registry: ModelRegistry | None = None,
):
    """Read a lake snapshot (latest by default), train on Ray Train, register the model, then gate it.

    The new version is registered without an alias and handed to the promotion gate
    (:func:`aisys.registry.promotion.promote`) against the current champion on the same snapshot's
    holdout: with no champion yet it is promoted when its guardrails pass (the first model of a workspace);
    otherwise it becomes champion only if it beats the champion. A refused version stays registered. The
    returned :class:`TrainOutcome` carries the verdict in ``promotion`` (and
    ``promoted``); the version is tagged with the decision run (``aisys.gate_run_id``, ``aisys.gate_decision``).
    ``on_epoch``/``on_step`` follow the run (``on_step`` also gets ``gate``). ``registry``: where the version is
    registered and tagged (default MLflow); the gate records its decision run in MLflow either way.
    """
    from aisys.data.lake import Lake
    from aisys.registry.promotion import GATE_DECISION_TAG, GATE_RUN_TAG, promote
    from aisys.runtime import init_ray

    lake = Lake.from_config(cfg.paths)
    manifest = lake.get(snapshot_id) if snapshot_id else lake.latest()
    if manifest is None:
        raise FileNotFoundError(f"the lake at {cfg.paths.lake_uri} has no snapshot yet: run `aisys ingest` first")
    events = lake.read_events(manifest.snapshot_id)
    if registry is None:
        from aisys.registry.mlflow_registry import MlflowRegistry

        registry = MlflowRegistry(cfg)
    init_ray(cfg)
    outcome = train_and_register(cfg, events, manifest.snapshot_id, promote=False, on_epoch=on_epoch,
                                 on_step=on_step, registry=registry)
    if on_step is not None:
        on_step("gate")
    outcome.promotion = promote(cfg, version=outcome.model_version, snapshot_id=manifest.snapshot_id)
    decision = "promote" if outcome.promotion.promoted else "refuse"
    registry.tag_version(outcome.model_version,
                         {GATE_RUN_TAG: outcome.promotion.run_id, GATE_DECISION_TAG: decision}, [outcome.run_id])
    return outcome
