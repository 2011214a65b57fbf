"""Train: events in, a trained model bundle with its test metrics and run record out.

events -> vocabulary + user histories (``aisys.features.sequences``) ->
leave-last-one-out split -> SASRec on Ray Train (validation reported per
epoch) and, for ``model.kind: multistage`` (the default), the closed-form
generators as Ray tasks and the blend tuned on valid
(:mod:`aisys.training.multistage`) -> test metrics of the model (through the
scorer serving uses) and of the popularity baseline on the same users -> a
:class:`ModelBundle` with lineage, and the params and metrics a run records.

Training never registers its own model: a composition above it
(:func:`aisys.pipeline.train_and_register`) hands :class:`TrainedModel` to the
registry. The caller reads the events (``Lake(uri).read_events(snapshot_id)``)
and passes them in, so this stage needs no lake and is testable on a table.
"""

from __future__ import annotations

import logging
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
from aisys.quality.protocol import leave_last_one_out, time_cut_validation
from aisys.training.loop import evaluate

EVAL_K = 10
logger = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    """A trained model, not registered: its bundle, test metrics, baseline, and what its run records."""

    bundle: ModelBundle
    metrics: dict[str, float]  # the model (its scorer) on the test split (hr@10, ndcg@10, mrr@10, coverage@10, ...)
    baseline_metrics: dict[str, float]  # popularity on the same users
    history: list[dict] = field(default_factory=list)  # per-epoch loss and validation metrics
    params: dict[str, Any] = field(default_factory=dict)  # the run's params (model, train, data, blend settings)
    logged: dict[str, float] = field(default_factory=dict)  # the run's metrics (test_*, baseline_*, valid_gain_*)


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


def train_model(
    cfg: AppConfig,
    events: pa.Table,
    snapshot_id: str,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> TrainedModel:
    """Train ``cfg.model.kind`` (SASRec alone, or the multi-stage model) on ``events`` (lake snapshot
    ``snapshot_id``) and evaluate it through its scorer; registering it is the caller's step.

    ``on_epoch(row)`` gets each epoch's history row as it finishes
    (:func:`~aisys.training.ray_train.train_with_ray`); ``on_step(name)`` is told when a step starts
    (``train``, and for the multi-stage model ``choose`` and ``refit``, then ``evaluate``).
    """
    step = on_step or (lambda name: None)
    from aisys.training.ray_train import train_with_ray

    vocab = build_vocabulary(events, cfg.features.event_weights)
    histories = user_histories(events, vocab.item_index())
    split = leave_last_one_out(histories)
    if len(split.test) == 0:
        raise ValueError(
            f"snapshot {snapshot_id!r}: no user has the 3 interactions needed for validation and test"
        )
    if cfg.model.kind == "multistage" and cfg.model.stages.validation != "next_item":
        split = _time_cut_or_next_item(cfg, split, multistage_times(events, vocab))
    storage = Path(cfg.paths.workspace) / "ray_results"
    max_len = cfg.features.max_seq_len
    step("train")
    multistage = None
    if cfg.model.kind == "multistage":
        result, multistage, titles = _train_multistage(cfg, events, vocab, histories, split, storage, on_epoch,
                                                        step)
    else:
        result = train_with_ray(cfg, split.train, split.valid, vocab, str(storage), on_epoch=on_epoch)
    step("evaluate")

    with _torch_threads(cfg.train.torch_threads):
        if multistage is not None:
            from aisys.training.multistage import multistage_test_metrics

            metrics, ranking_logged = multistage_test_metrics(multistage, split.test, multistage_times(events, vocab),
                                                              EVAL_K, vocab.item_popularity)
        else:
            metrics = evaluate(_sasrec(result), split.test, max_len, k=EVAL_K, item_popularity=vocab.item_popularity)
        baseline = evaluate(
            PopularityModel(vocab), split.test, max_len, k=EVAL_K, item_popularity=vocab.item_popularity
        )

    model_config = result.model_config
    extra: dict[str, Any] = {}
    if multistage is not None:
        ranking_config, ranking_extra = multistage.bundle_fields()  # the ranking stage (and its feature set)
        model_config = {"sasrec": result.model_config, "stages": [spec.to_dict() for spec in multistage.specs],
                        "blend": multistage.blend.to_dict(), **ranking_config}
        extra = {"model_kind": "multistage", "arrays": multistage.arrays,
                 "item_titles": list(titles) if "title" in multistage.arrays else [], **ranking_extra}
    bundle = ModelBundle(
        model_kind=extra.pop("model_kind", MODEL_KIND),
        model_config=model_config,
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
        **extra,
    )
    params = {
        **{f"model.{k}": v for k, v in result.model_config.items()},
        **{f"train.{k}": v for k, v in cfg.train.model_dump().items()},
        "features.max_seq_len": max_len,
        "data.snapshot_id": snapshot_id,
        "data.n_events": events.num_rows,
        "data.n_users": len(histories),
        "data.n_eval_users": len(split.test),
        "data.n_valid_users": len(split.valid),
        "best_epoch": result.best_epoch,
    }
    logged = {
        **{f"test_{k}": v for k, v in metrics.items()},
        **{f"baseline_{k}": v for k, v in baseline.items()},
    }
    if multistage is not None:
        params.update(_multistage_params(cfg, multistage))
        # What each generator added on valid (NDCG@10 lost without it) and the came-back bucket's gain.
        logged.update({f"valid_gain_{name}": gain for name, gain in multistage.blend.stage_gain.items()})
        logged.update({"valid_gain_gap_bucket": multistage.blend.bucket_gain,
                       "valid_blend_ndcg@10": multistage.blend.valid_ndcg, **ranking_logged,
                       **{f"seconds_{name}": value for name, value in multistage.seconds.items()}})
    return TrainedModel(
        bundle=bundle, metrics=metrics, baseline_metrics=baseline, history=result.history, params=params, logged=logged
    )


def _time_cut_or_next_item(cfg: AppConfig, split: Any, times: dict[str, list[float]]) -> Any:
    """``split`` validated on a time cut (``model.stages.validation``: time_cut or mixed;
    :func:`~aisys.quality.protocol.time_cut_validation`), or as it is when fewer than
    ``model.stages.time_cut_min_users`` users come back after the cut."""
    mixed = cfg.model.stages.validation == "mixed"
    cut = time_cut_validation(split, times, keep_next_item=mixed)
    returning = len(cut.valid) - (len(split.valid) if mixed else 0)
    if returning >= cfg.model.stages.time_cut_min_users:
        return cut
    logger.warning("time-cut validation: %d users on both sides of the cut (< model.stages.time_cut_min_users "
                   "%d); validating on each user's next item instead", returning, cfg.model.stages.time_cut_min_users)
    return split


def _sasrec(result: Any) -> SASRec:
    """The trained SASRec of a Ray Train result, in eval mode."""
    model = SASRec(SASRecConfig(**result.model_config))
    model.load_state_dict(result.state_dict)
    return model.eval()


def multistage_times(events: pa.Table, vocab: Any) -> dict[str, list[float]]:
    """Each user's event times aligned with their history (:func:`aisys.features.context.user_history_times`)."""
    from aisys.features.context import user_history_times

    return user_history_times(events, vocab.item_index())


def _train_multistage(cfg, events, vocab, histories, split, storage, on_epoch, step=lambda name: None):
    """SASRec on Ray Train beside the closed-form generators on Ray tasks, then the blend (training/multistage.py).

    ``step`` is told ``choose`` when SASRec's fit returns (the blend and the ranking stage are chosen on valid) and
    ``refit`` when the SASRec refit on train + valid starts, so a progress display does not sit on the last epoch.
    """
    from aisys.models.multistage import SASRecScorer
    from aisys.runtime import init_ray
    from aisys.training.multistage import train_multistage
    from aisys.training.ray_train import train_with_ray

    init_ray(cfg)  # the generator fits are submitted before Ray Train starts
    titles = item_titles(cfg, vocab.item_ids)

    def sasrec_scorer(result):
        return SASRecScorer(_sasrec(result), cfg.features.max_seq_len)

    def refit_sasrec(result, train_and_valid):
        # The first fit's best number of epochs, validated once after the last (the valid items are history now,
        # so no epoch is chosen on them).
        epochs = max(result.best_epoch, 0) + 1
        refit_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs,
                                                                                  "eval_every": epochs})})
        step("refit")
        return train_with_ray(refit_cfg, train_and_valid, split.valid, vocab, str(storage))

    def train_sasrec():
        result = train_with_ray(cfg, split.train, split.valid, vocab, str(storage), on_epoch=on_epoch)
        step("choose")
        return result

    with _torch_threads(cfg.train.torch_threads):
        result, fit = train_multistage(
            cfg, histories, multistage_times(events, vocab), split, vocab.n_items, titles,
            train_sasrec, sasrec_scorer, item_categories=vocab.item_categories, refit_sasrec=refit_sasrec,
        )
    return result, fit, titles


def item_titles(cfg: AppConfig, item_ids: list[str]) -> list[str] | None:
    """Titles aligned with the item indices (``""`` for padding and unnamed items), or None when there are none.

    From the lake's product table (``name``; written by ``aisys data`` for the simulator and MovieLens, or an
    operator's export) or, without one, MovieLens's own titles when ``data.source`` is movielens.
    """
    names: dict[str, str] = {}
    try:
        from aisys.data.lake import Lake
        from aisys.data.products import read_products

        table = read_products(Lake.from_config(cfg.paths))
        if table is not None:
            names = {i: n or "" for i, n in zip(table.column("item_id").to_pylist(), table.column("name").to_pylist())}
        elif cfg.data.source == "movielens":
            from aisys.data.movielens import movielens_folder, read_item_titles

            names = read_item_titles(movielens_folder(cfg.data.movielens, cfg.paths.cache_dir))
    except (OSError, ValueError) as error:  # titles are optional: the title generator is then off
        logger.warning("no item titles (%s): the title generator is off", error)
        return None
    titles = [names.get(item, "") if item else "" for item in item_ids]
    return titles if any(titles) else None


def _multistage_params(cfg: AppConfig, fit: Any) -> dict[str, Any]:
    """The MLflow params of a multi-stage run: the stage settings and the tuned blend."""
    blend = fit.blend
    params: dict[str, Any] = {f"model.stages.{k}": v for k, v in cfg.model.stages.model_dump().items()}
    params["blend.stages"] = ",".join(blend.active_stages())
    params["blend.gap_thresholds_s"] = blend.gap_thresholds
    if fit.ranking is not None:
        params["ranking.chosen"] = fit.ranking.chosen
        params["ranking.reason"] = fit.ranking.reason[:500]
    for b, weights in enumerate(blend.bucket_weights):
        for name, weight in zip(blend.stages, weights):
            params[f"blend.bucket{b}.{name}"] = weight
    return params
