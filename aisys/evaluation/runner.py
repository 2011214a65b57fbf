"""Evaluate one model on one split of the protocol: tune on valid, refit for test, score, export.

For each model a small grid of settings is fit on the valid task's train and
scored on valid (NDCG@10); the best settings are refit on the test task's
train (LOO: train + valid; temporal: everything before the cut) and scored on
test. SASRec validates every ``train.eval_every`` epochs up to
``train.epochs`` and keeps the best epoch count for the refit, which then
trains exactly that many epochs (no early stopping on test).

The sequential model ``sasrec+ease+slit+recentpop`` blends SASRec with an EASE
variant, SLIT and recent popularity; its blend is tuned on valid with the SASRec
fit on valid's train (:func:`_tune_recency_blend`). ``sasrec+ctx-blend`` is that
blend with its own weights for users whose request comes long after their last
interaction ("came back"; :func:`_tune_context_blend`, the gaps from
:func:`task_request_gaps`). ``sasrec+ctx-blend+title`` adds the titles' word
similarity to the user's recent items (:class:`~aisys.models.item_features.TitleSimilarity`,
weights per gap bucket: :func:`_tune_title_weights`; titles from :func:`load_item_titles`).
Time-aware models get each train interaction's timestamp from :func:`task_times`.

Everything here is plain numpy/torch in this process: Ray Train is the
production path for the same loop (``benchmarks/train_throughput.py``).
The pieces live beside it: the model names, grids and presets (:mod:`~aisys.evaluation.runner_settings`), task
inputs and scoring (:mod:`~aisys.evaluation.tasks`), the blends and their searches
(:mod:`~aisys.evaluation.blends`), the SASRec fit cache (:mod:`~aisys.evaluation.fit_cache`) and the export
(:mod:`~aisys.evaluation.export`); their names are re-exported here for callers of the runner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from aisys.config import AppConfig
from aisys.evaluation.blends import (  # noqa: F401 (re-exported)
    _BLEND_KEYS,
    _CONTEXT_KEYS,
    _TITLE_KEYS,
    _blend_around,
    _sequential_model,
    _tune_blend,
    _tune_context_blend,
    _tune_recency_blend,
    _tune_title_weights,
    _weighted_sum,
)
from aisys.evaluation.export import (  # noqa: F401 (re-exported)
    EXPORT_SCHEMA,
    export_table,
    load_item_titles,
    load_movielens_interactions,
    top_items,
    write_export,
)
from aisys.evaluation.fit_cache import CachedSASRec  # noqa: F401 (re-exported)
from aisys.quality.protocol import EvalTask, Interactions, item_popularity, split_tasks
from aisys.quality.ranking import UserMetrics
from aisys.evaluation.runner_settings import (  # noqa: F401 (re-exported)
    BASELINE_GRIDS,
    BLEND_WEIGHTS,
    CONTEXT_MODELS,
    EXPORT_DEPTH,
    K,
    ML100K_PRESET,
    ML100K_SPLIT_PRESET,
    MODEL_NAMES,
    SELECT_METRIC,
    SEQUENTIAL_MODELS,
    SPLITS,
    make_baseline,
    ml100k_config,
    sequential_settings,
)
from aisys.evaluation.sequential import SASRecRecommender
from aisys.evaluation.tasks import score_task, task_request_gaps, task_times  # noqa: F401 (re-exported)
from aisys.models.baselines import Recommender, WeightedBlend, fit_model
from aisys.models.blend_tuning import (  # noqa: F401 (re-exported: the blends' grids, as callers read them here)
    CONTEXT_GAP_THRESHOLDS,
    CONTEXT_MIN_GAIN,
    CONTEXT_SASREC_WEIGHTS,
    RECENCY_BLEND_WEIGHTS,
    SASREC_BLEND_WEIGHTS,
    TITLE_DECAY,
    TITLE_WEIGHTS,
    TITLE_WINDOW,
)


@dataclass
class EvaluationResult:
    """One model on one split: chosen settings, valid and test metrics, the refit's time and per-user results."""

    model: str
    split: str
    seed: int
    settings: dict[str, Any]
    valid_metrics: dict[str, float]
    test_metrics: dict[str, float]
    train_seconds: float  # the refit on the test task
    tune_seconds: float  # every fit on the valid task
    test_task: EvalTask
    per_user: UserMetrics
    top_items: np.ndarray  # (U, EXPORT_DEPTH) item indices of the test task's users, best first
    item_popularity: np.ndarray
    trace: dict[int, float] = field(default_factory=dict)  # SASRec: valid NDCG@10 per checked epoch
    component: "EvaluationResult | None" = None  # sasrec+ease: the SASRec inside the blend, scored alone



def _fit_timed(fit: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fit()
    return time.perf_counter() - started


def evaluate_model(
    name: str, data: Interactions, split: str, cfg: AppConfig, seed: int = 0,
    log: Callable[[str], None] | None = None, settings: dict[str, Any] | None = None,
    fit_cache: str | Path | None = None, item_titles: Sequence[str] | None = None,
) -> EvaluationResult:
    """Tune ``name`` on the valid task of ``split``, refit on the test task, score and rank (see module doc).

    With ``settings`` (e.g. ``EvaluationResult.settings`` of an earlier seed)
    tuning is skipped (``valid_metrics`` is then empty) and the model is refit
    with them: how the benchmark repeats a tuned model over seeds. With
    ``fit_cache`` (a folder) SASRec fits are stored there and reused when the
    same settings, seed and data come again (:class:`CachedSASRec`); the times
    reported are then those of the original fits. ``item_titles`` (``item_titles[i]``
    the title of item index ``i``) feed ``sasrec+ctx-blend+title``; by default they
    are read from the MovieLens folder of ``cfg`` (:func:`load_item_titles`).
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")
    log = log or (lambda message: None)
    valid, test = split_tasks(data, split)
    valid_times, test_times = task_times(data, valid), task_times(data, test)
    test_gaps = task_request_gaps(data, test) if name in CONTEXT_MODELS else None
    titles = None
    if name == "sasrec+ctx-blend+title":
        titles = list(item_titles) if item_titles is not None else load_item_titles(cfg, data.item_ids)
    trace: dict[int, float] = {}
    tune_seconds = 0.0
    sasrec_valid_metrics: dict[str, float] = {}
    if settings is not None:
        chosen = dict(settings)
        valid_metrics: dict[str, float] = {}  # not tuned here: the settings come from an earlier run
        if name in SEQUENTIAL_MODELS:
            chosen = {**chosen, "seed": seed}
            model: Recommender = _sequential_model(chosen, fit_cache, test.name, titles)
        else:
            model = make_baseline(name, chosen, seed, cfg.train.torch_threads)
    elif name in SEQUENTIAL_MODELS:
        base = sequential_settings(cfg, seed)

        validations = []

        def validate(model: SASRecRecommender) -> float:
            score = score_task(model, valid)[0][SELECT_METRIC]
            validations.append(score)
            # Progress for the CLI: a SASRec fit is the long part (minutes on ML-100K).
            epoch = min(len(validations) * base.eval_every, base.epochs)
            log(f"sasrec {split}: epoch {epoch}/{base.epochs} valid {SELECT_METRIC} {score:.4f}")
            return score

        tuner = CachedSASRec(base, fit_cache, valid.name) if fit_cache else SASRecRecommender(base)
        log(f"sasrec {split}: fitting on the valid task's train, up to {base.epochs} epochs")
        tune_seconds = _fit_timed(lambda: tuner.fit(valid.train, valid.n_items, validate))
        tune_seconds += _cached_seconds(tuner)
        trace = dict(tuner.trace.scores)
        best_epochs = tuner.trace.best_epoch
        valid_metrics = score_task(tuner, valid)[0]
        log(f"sasrec {split}: valid {SELECT_METRIC} by epoch {trace} -> refit {best_epochs} epochs")
        chosen = {**base.__dict__, "epochs": best_epochs}
        sasrec_valid_metrics = valid_metrics
        if name == "sasrec+ease":
            blend, valid_metrics, blend_seconds = _tune_blend(tuner, valid, log)
            tune_seconds += blend_seconds
            chosen.update(blend)
        elif name == "sasrec+ease+slit+recentpop":
            blend, valid_metrics, blend_seconds = _tune_recency_blend(tuner, valid, valid_times, log)
            tune_seconds += blend_seconds
            chosen.update(blend)
        elif name in CONTEXT_MODELS:
            valid_gaps = task_request_gaps(data, valid)
            blend, valid_metrics, blend_seconds = _tune_context_blend(tuner, valid, valid_times, valid_gaps, log)
            tune_seconds += blend_seconds
            chosen.update(blend)
            if name == "sasrec+ctx-blend+title":
                assert titles is not None
                blend, valid_metrics, blend_seconds = _tune_title_weights(
                    tuner, blend, titles, valid, valid_times, valid_gaps, log
                )
                tune_seconds += blend_seconds
                chosen.update(blend)
        model = _sequential_model(chosen, fit_cache, test.name, titles)
    else:
        best: tuple[float, dict[str, Any], dict[str, float]] | None = None
        for point in BASELINE_GRIDS[name]:
            candidate = make_baseline(name, point, seed, cfg.train.torch_threads)
            tune_seconds += _fit_timed(lambda: fit_model(candidate, valid.train, valid.n_items, valid_times))
            metrics = score_task(candidate, valid)[0]
            log(f"{name} {split}: {point} valid {SELECT_METRIC} {metrics[SELECT_METRIC]:.4f}")
            if best is None or metrics[SELECT_METRIC] > best[0]:
                best = (metrics[SELECT_METRIC], point, metrics)
        assert best is not None
        _, chosen, valid_metrics = best
        model = make_baseline(name, chosen, seed, cfg.train.torch_threads)
    log(f"{name} {split}: refit on the test task's train ({len(test.train)} users)")
    train_seconds = _fit_timed(lambda: fit_model(model, test.train, test.n_items, test_times))
    sasrec_part = model.models[0] if isinstance(model, WeightedBlend) else model
    train_seconds += _cached_seconds(sasrec_part)
    test_metrics, per_user, scores = score_task(model, test, gaps=test_gaps)
    top = top_items(scores, test.histories(), EXPORT_DEPTH)
    component = None
    if isinstance(model, WeightedBlend):
        # The blend's SASRec is exactly what `sasrec` alone would train (its epochs were
        # chosen on SASRec's own valid score): report it too, at no extra training.
        alone_metrics, alone_per_user, alone_scores = score_task(model.models[0], test)
        component = EvaluationResult(
            model="sasrec", split=split, seed=seed,
            settings={k: v for k, v in chosen.items() if k not in (*_BLEND_KEYS, *_CONTEXT_KEYS, *_TITLE_KEYS)},
            valid_metrics=sasrec_valid_metrics, test_metrics=alone_metrics,
            train_seconds=model.fit_seconds[0] + _cached_seconds(sasrec_part), tune_seconds=tune_seconds,
            test_task=test,
            per_user=alone_per_user, top_items=top_items(alone_scores, test.histories(), EXPORT_DEPTH),
            item_popularity=item_popularity(test), trace=trace,
        )
    return EvaluationResult(
        model=name, split=split, seed=seed, settings=dict(chosen), valid_metrics=valid_metrics,
        test_metrics=test_metrics, train_seconds=train_seconds, tune_seconds=tune_seconds, test_task=test,
        per_user=per_user, top_items=top, item_popularity=item_popularity(test), trace=trace, component=component,
    )



def _cached_seconds(model: Any) -> float:
    """The original fit time of a SASRec loaded from the fit cache (0 for anything else)."""
    return model.trace.seconds if getattr(model, "from_cache", False) else 0.0

