"""Train and register: events in, a registered model version out.

events -> vocabulary + user histories (``aisys.features.sequences``) ->
leave-last-one-out split -> SASRec on Ray Train (validation reported per
epoch) -> test metrics of the model and of the popularity baseline on the same
users -> a :class:`ModelBundle` with lineage -> the MLflow registry.

The caller reads the events (``Lake(uri).read_events(snapshot_id)``) and
passes them in, so this stage needs no lake and is testable on a table.
"""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import torch

from aisys.config import AppConfig
from aisys.features.sequences import build_vocabulary, user_histories
from aisys.models.bundle import ModelBundle
from aisys.models.popularity import PopularityModel
from aisys.models.sasrec import MODEL_KIND, SASRec, SASRecConfig
from aisys.training.loop import evaluate
from aisys.training.split import leave_last_one_out

EVAL_K = 10


@dataclass
class TrainOutcome:
    """A trained, registered model: its bundle, test metrics, baseline and registry coordinates."""

    bundle: ModelBundle
    metrics: dict[str, float]  # SASRec on the test split (hr@10, ndcg@10, mrr@10, coverage@10, popularity@10)
    baseline_metrics: dict[str, float]  # popularity on the same users
    history: list[dict] = field(default_factory=list)  # per-epoch loss and validation metrics
    run_id: str = ""
    model_name: str = ""
    model_version: str = ""
    # The gate's verdict on this version (a PromotionOutcome) when a face gated it after training
    # (aisys.pipeline.train_from_lake); None when nobody did.
    promotion: Any = None

    @property
    def promoted(self) -> bool | None:
        """Whether the gate made this version champion (None: not gated)."""
        return None if self.promotion is None else bool(self.promotion.promoted)


def code_version() -> str:
    """The git commit of the code (``-dirty`` when the tree has changes), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    # Evaluation runs in the caller's process: bound its threads, then restore them.
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_and_register(
    cfg: AppConfig,
    events: pa.Table,
    snapshot_id: str,
    promote: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """Train SASRec on ``events`` (lake snapshot ``snapshot_id``), evaluate it and register it.

    With ``promote`` the new version takes ``cfg.registry.champion_alias`` directly, with no gate (tests and
    benchmarks that need a champion in one call); without, it is registered with no alias and a gate decides
    (``aisys train``, the retrain loop). ``on_epoch(row)`` gets each epoch's history row as it finishes
    (:func:`~aisys.training.ray_train.train_with_ray`); ``on_step(name)`` is told when a step starts
    (``train``, ``evaluate``, ``register``).
    """
    step = on_step or (lambda name: None)
    from aisys.registry.mlflow_registry import log_and_register
    from aisys.training.ray_train import train_with_ray

    vocab = build_vocabulary(events, cfg.features.event_weights)
    histories = user_histories(events, vocab.item_index())
    split = leave_last_one_out(histories)
    if len(split.test) == 0:
        raise ValueError(
            f"snapshot {snapshot_id!r}: no user has the 3 interactions needed for validation and test"
        )
    storage = Path(cfg.paths.workspace) / "ray_results"
    step("train")
    result = train_with_ray(cfg, split.train, split.valid, vocab, str(storage), on_epoch=on_epoch)
    step("evaluate")

    model = SASRec(SASRecConfig(**result.model_config))
    model.load_state_dict(result.state_dict)
    model.eval()
    max_len = cfg.features.max_seq_len
    with _torch_threads(cfg.train.torch_threads):
        metrics = evaluate(model, split.test, max_len, k=EVAL_K, item_popularity=vocab.item_popularity)
        baseline = evaluate(
            PopularityModel(vocab), split.test, max_len, k=EVAL_K, item_popularity=vocab.item_popularity
        )

    bundle = ModelBundle(
        model_kind=MODEL_KIND,
        model_config=result.model_config,
        item_ids=vocab.item_ids,
        item_popularity=vocab.item_popularity,
        state_dict=result.state_dict,
        item_categories=vocab.item_categories,
        max_seq_len=max_len,
        lineage={
            "snapshot_id": snapshot_id,
            "code_version": code_version(),
            "trained_at": datetime.now(timezone.utc).isoformat(),
            "best_epoch": result.best_epoch,
        },
        metrics=metrics,
    )
    params = {
        **{f"model.{k}": v for k, v in result.model_config.items()},
        **{f"train.{k}": v for k, v in cfg.train.model_dump().items()},
        "features.max_seq_len": max_len,
        "data.snapshot_id": snapshot_id,
        "data.n_events": events.num_rows,
        "data.n_users": len(histories),
        "data.n_eval_users": len(split.test),
        "best_epoch": result.best_epoch,
    }
    logged = {
        **{f"test_{k}": v for k, v in metrics.items()},
        **{f"baseline_{k}": v for k, v in baseline.items()},
    }
    step("register")
    registered = log_and_register(
        cfg,
        bundle,
        params,
        logged,
        result.history,
        snapshot_id,
        alias=cfg.registry.champion_alias if promote else None,
    )
    return TrainOutcome(
        bundle=bundle,
        metrics=metrics,
        baseline_metrics=baseline,
        history=result.history,
        run_id=registered.run_id,
        model_name=registered.name,
        model_version=registered.version,
    )
