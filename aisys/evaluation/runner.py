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
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from aisys.config import AppConfig
from aisys.evaluation.protocol import (
    EvalTask,
    Interactions,
    interactions_from_events,
    item_popularity,
    split_tasks,
    time_order,
)
from aisys.evaluation.ranking import UserMetrics, summarize, user_metrics
from aisys.evaluation.sequential import FitTrace, SASRecRecommender, SequentialSettings
from aisys.models.baselines import (
    BPRMF,
    EASE,
    ItemKNN,
    MostPopular,
    RecentPopularity,
    Recommender,
    SequentialLinear,
    WeightedBlend,
    blend_many,
    blend_scores,
    fit_model,
    standardize_rows,
)
from aisys.models.blend_tuning import (
    CONTEXT_GAP_THRESHOLDS,
    CONTEXT_MIN_GAIN,
    CONTEXT_SASREC_WEIGHTS,
    RECENCY_BLEND_WEIGHTS,
    SASREC_BLEND_WEIGHTS,
    TITLE_DECAY,
    TITLE_WEIGHTS,
    TITLE_WINDOW,
    blend_z_scores,
)
from aisys.models.context_blend import ContextBlend, blend_by_bucket, gap_buckets, request_gaps
from aisys.models.item_features import TitleSimilarity
from aisys.schemas import TIMESTAMP_TYPE

MODEL_NAMES = (
    "sasrec", "pop", "itemknn", "ease", "bpr", "recentpop", "ease-recency", "slit", "sasrec+ease",
    "sasrec+ease+slit+recentpop", "sasrec+ctx-blend", "sasrec+ctx-blend+title",
)
SEQUENTIAL_MODELS = (
    "sasrec", "sasrec+ease", "sasrec+ease+slit+recentpop", "sasrec+ctx-blend", "sasrec+ctx-blend+title",
)
# The models that take each request's gap since the user's last interaction.
CONTEXT_MODELS = ("sasrec+ctx-blend", "sasrec+ctx-blend+title")
BLEND_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
# The recency, context and title blends' grids (sasrec+ease+slit+recentpop, sasrec+ctx-blend, +title) are the
# multi-stage model's: RECENCY_BLEND_WEIGHTS (EASE, SLIT, recent popularity relative to SASRec's 1),
# SASREC_BLEND_WEIGHTS, CONTEXT_GAP_THRESHOLDS ("came back" after 1 h / 1 d / 1 w), CONTEXT_SASREC_WEIGHTS,
# CONTEXT_MIN_GAIN (a bucket or the title is kept only if it gains this much valid NDCG@10), TITLE_WINDOW,
# TITLE_DECAY and TITLE_WEIGHTS live in aisys/models/blend_tuning.py (imported above).
# Interaction timestamps are int64 in the event schema's unit (microseconds); models take seconds.
_TIME_UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[TIMESTAMP_TYPE.unit]
SPLITS = ("loo", "temporal")
SELECT_METRIC = "ndcg@10"
# The SASRec settings chosen on ML-100K validation (docs/evaluation.md); `aisys evaluate`
# and the benchmark apply them beneath the user's own --set overrides.
ML100K_PRESET: tuple[str, ...] = (
    "features.max_seq_len=200",
    "model.dropout=0.2",
    "train.epochs=30",
    "train.eval_every=3",
    "train.batch_size=64",
    "train.lr=0.002",
)
# Per split, on top: the temporal targets are every later item, so predicting 20 steps ahead helped on valid.
ML100K_SPLIT_PRESET: dict[str, tuple[str, ...]] = {
    "loo": (),
    # 12 epochs: valid peaked at 9 (0.131; 0.135 at 24 of 30), and SASRec gets ~0.1 of the blend's weight here.
    "temporal": ("train.loss_horizon=20", "train.loss_horizon_weight=1.0", "train.epochs=12"),
}
EXPORT_DEPTH = 100
K = 10

# Settings grids tuned on valid (kept small: every point is a fit on 2 cores).
BASELINE_GRIDS: dict[str, list[dict[str, Any]]] = {
    "pop": [{}],
    "itemknn": [{"neighbors": n, "shrink": s} for n in (50, 200) for s in (0.0, 50.0)],
    "ease": [{"l2": l2} for l2 in (30.0, 100.0, 300.0, 1000.0)],
    "bpr": [{"dim": 64, "epochs": e, "l2": l2} for e in (20, 50) for l2 in (1e-5, 1e-3)],
    # Recency: popularity decayed by age (what is popular now), and EASE that weighs a
    # user's recent items more (input_decay) and recent co-occurrences more (half_life_days).
    "recentpop": [{"half_life_days": h} for h in (1.0, 3.0, 7.0, 14.0, 30.0, 60.0)],
    "slit": [{"l2": l2} for l2 in (30.0, 100.0, 300.0)],
    "ease-recency": [
        {"l2": l2, "input_decay": d, "half_life_days": h}
        for l2 in (100.0, 300.0, 1000.0) for d in (1.0, 0.9, 0.8) for h in (None, 60.0)
    ],
}


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


class CachedSASRec(SASRecRecommender):
    """A :class:`SASRecRecommender` whose fits are stored in ``cache_dir`` and reloaded when asked again.

    The key is every setting (seed and epochs included), the catalogue size, the
    train sequences, and whether (and on which ``task``) it validated: the same
    key trains the same model, so a benchmark re-run (e.g. with a new blend) skips
    SASRec training. ``trace.seconds`` keeps the original fit's time.
    """

    def __init__(self, settings: SequentialSettings, cache_dir: str | Path, task: str = "") -> None:
        super().__init__(settings)
        self.cache_dir, self.task = Path(cache_dir), task
        self.from_cache = False

    def _path(self, train: Mapping[str, Sequence[int]], n_items: int, validated: bool) -> Path:
        key = json.dumps(
            {"settings": asdict(self.settings), "n_items": n_items, "validated": validated, "task": self.task,
             "train": sorted((u, list(map(int, seq))) for u, seq in train.items())},
            sort_keys=True,
        )
        return self.cache_dir / f"sasrec-{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"

    def fit(self, train, n_items, validate=None):  # noqa: D102 (see SASRecRecommender.fit)
        import torch

        from aisys.models.sasrec import SASRec, SASRecConfig

        path = self._path(train, n_items, validate is not None)
        if path.exists():
            stored = torch.load(path, weights_only=True)
            s = self.settings
            self.model = SASRec(SASRecConfig(
                n_items=n_items, max_seq_len=s.max_seq_len, embedding_dim=s.embedding_dim, n_layers=s.n_layers,
                n_heads=s.n_heads, dropout=s.dropout,
            ))
            self.model.load_state_dict(stored["state_dict"])
            self.model.eval()
            self.trace = FitTrace(**stored["trace"])
            self.from_cache = True
            return self
        super().fit(train, n_items, validate)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"state_dict": self.model.state_dict(), "trace": asdict(self.trace)}, tmp)
        tmp.replace(path)  # atomic: a parallel run never reads half a file
        return self


def ml100k_config(path: str | None, overrides: list[str] | tuple[str, ...], split: str) -> AppConfig:
    """The config for ``split`` on ML-100K: the presets above, then ``overrides`` (which win)."""
    from aisys.config import load_config

    if split not in ML100K_SPLIT_PRESET:
        raise ValueError(f"split must be one of {sorted(ML100K_SPLIT_PRESET)}, got {split!r}")
    return load_config(path, [*ML100K_PRESET, *ML100K_SPLIT_PRESET[split], *overrides])


def sequential_settings(cfg: AppConfig, seed: int) -> SequentialSettings:
    """SASRec settings from the config (``features.max_seq_len``, ``model.*``, ``train.*``)."""
    return SequentialSettings(
        max_seq_len=cfg.features.max_seq_len, embedding_dim=cfg.model.embedding_dim, n_layers=cfg.model.n_layers,
        n_heads=cfg.model.n_heads, dropout=cfg.model.dropout, epochs=cfg.train.epochs,
        batch_size=cfg.train.batch_size, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, seed=seed,
        threads=cfg.train.torch_threads, eval_every=cfg.train.eval_every,
        bucket_by_length=cfg.train.bucket_by_length, horizon=cfg.train.loss_horizon,
        horizon_weight=cfg.train.loss_horizon_weight,
    )


def make_baseline(name: str, settings: dict[str, Any], seed: int, threads: int = 1) -> Recommender:
    """A fresh, unfitted baseline ``name`` with ``settings``."""
    if name == "pop":
        return MostPopular()
    if name == "itemknn":
        return ItemKNN(**settings)
    if name == "ease":
        return EASE(**settings)
    if name == "bpr":
        return BPRMF(**settings, seed=seed, threads=threads)
    if name == "recentpop":
        return RecentPopularity(**settings)
    if name == "ease-recency":
        return EASE(**settings)
    if name == "slit":
        return SequentialLinear(**settings)
    raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")


def task_times(data: Interactions, task: EvalTask) -> dict[str, list[int]]:
    """Each user's train timestamps in seconds, aligned with ``task.train[user]`` (for time-aware models).

    Every task's train sequence is a prefix of the user's time-ordered interactions
    (leave-one-out drops the last one or two; temporal keeps those up to a cut).
    """
    items: dict[str, list[int]] = {}
    stamps: dict[str, list[int]] = {}
    for row in time_order(data.timestamps):
        user = str(data.users[row])
        items.setdefault(user, []).append(int(data.items[row]))
        stamps.setdefault(user, []).append(int(data.timestamps[row]) // _TIME_UNITS_PER_SECOND)
    times = {}
    for user, seq in task.train.items():
        if items.get(user, [])[: len(seq)] != list(seq):
            raise ValueError(f"task {task.name!r}: train of user {user!r} is not a prefix of their interactions")
        times[user] = stamps[user][: len(seq)]
    return times


def task_request_gaps(data: Interactions, task: EvalTask) -> np.ndarray:
    """Per evaluated user of ``task``: seconds from their newest train interaction to their request.

    The request time is that of the user's first interaction after their train
    prefix (leave-one-out: the target's; temporal: their first after the cut):
    when serving, a request carries its own time, so this is no look at the target item.
    """
    stamps: dict[str, list[int]] = {}
    for row in time_order(data.timestamps):
        stamps.setdefault(str(data.users[row]), []).append(int(data.timestamps[row]) // _TIME_UNITS_PER_SECOND)
    last, now = [], []
    for user in task.users:
        n = len(task.train.get(user, []))
        if n == 0 or n >= len(stamps.get(user, [])):
            raise ValueError(f"task {task.name!r}: user {user!r} has no train interaction or none after it")
        last.append(stamps[user][n - 1])
        now.append(stamps[user][n])
    return request_gaps(last, now)


def score_task(
    model: Recommender, task: EvalTask, k: int = K, gaps: np.ndarray | None = None
) -> tuple[dict[str, float], UserMetrics, np.ndarray]:
    """Metrics of a fitted model on ``task``, per-user results and its raw (U, n_items + 1) scores.

    ``gaps`` (:func:`task_request_gaps`) go to a model that uses the request's context (``uses_context``).
    """
    if len(task) == 0:
        raise ValueError(f"task {task.name!r} has no user to evaluate")
    histories = task.histories()
    if getattr(model, "uses_context", False):
        scores = model.score(task.users, histories, gaps=gaps)
    else:
        scores = model.score(task.users, histories)
    per_user = user_metrics(scores, task.targets, histories, k)
    return summarize(per_user, task.n_items, k, item_popularity(task)), per_user, scores


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


_BLEND_KEYS = (
    "ease_l2", "blend_weight", "ease_input_decay", "ease_half_life_days", "recent_half_life_days", "recent_weight",
    "sasrec_weight", "slit_weight",
)
# sasrec+ctx-blend on top: the gap threshold (None: one bucket) and the "came back" bucket's weights.
_CONTEXT_KEYS = (
    "ctx_gap_seconds", "ctx_sasrec_weight", "ctx_ease_weight", "ctx_slit_weight", "ctx_recent_half_life_days",
    "ctx_recent_weight",
)
# sasrec+ctx-blend+title on top: the title similarity's window, decay and weight in each bucket (ctx_: came back).
_TITLE_KEYS = ("title_window", "title_decay", "title_weight", "ctx_title_weight")


def _cached_seconds(model: Any) -> float:
    """The original fit time of a SASRec loaded from the fit cache (0 for anything else)."""
    return model.trace.seconds if getattr(model, "from_cache", False) else 0.0


def _sequential_model(
    settings: dict[str, Any], fit_cache: str | Path | None = None, task: str = "",
    titles: Sequence[str] | None = None,
) -> Recommender:
    """SASRec from its settings; blended with EASE when they carry ``ease_l2`` and ``blend_weight``, and
    also with recent popularity when they carry ``recent_half_life_days`` and ``recent_weight``; a
    :class:`ContextBlend` when they carry ``ctx_gap_seconds`` (``sasrec+ctx-blend``), with a
    :class:`TitleSimilarity` of ``titles`` as its last model when they carry ``title_weight``."""
    settings = dict(settings)
    blend = {key: settings.pop(key) for key in (*_BLEND_KEYS, *_CONTEXT_KEYS, *_TITLE_KEYS) if key in settings}
    sequential = SequentialSettings(**settings)
    sasrec = CachedSASRec(sequential, fit_cache, task) if fit_cache else SASRecRecommender(sequential)
    if not blend:
        return sasrec
    return _blend_around(sasrec, blend, titles)


def _blend_around(sasrec: Recommender, blend: dict[str, Any], titles: Sequence[str] | None = None) -> Recommender:
    """The blend that the settings in ``blend`` describe, with ``sasrec`` as its first model (see
    :func:`_sequential_model`)."""
    if "title_weight" in blend:
        if titles is None:
            raise ValueError("settings with title_weight need the item titles (titles=)")
        context = _blend_around(sasrec, {k: v for k, v in blend.items() if k not in _TITLE_KEYS})
        assert isinstance(context, ContextBlend)
        title = TitleSimilarity(titles, blend["title_window"], blend["title_decay"])
        title_weights = [blend["title_weight"], blend.get("ctx_title_weight", 0.0)]
        return ContextBlend(
            [*context.models, title],
            [[*weights, title_weights[b]] for b, weights in enumerate(context.bucket_weights)],
            context.gap_thresholds,
        )
    ease = EASE(
        l2=blend["ease_l2"], input_decay=blend.get("ease_input_decay", 1.0),
        half_life_days=blend.get("ease_half_life_days"),
    )
    if "recent_half_life_days" not in blend:
        return WeightedBlend([sasrec, ease], [1.0, blend["blend_weight"]])
    recent = RecentPopularity(blend["recent_half_life_days"])
    weights = [blend.get("sasrec_weight", 1.0), blend["blend_weight"], blend["recent_weight"], blend["slit_weight"]]
    if "ctx_gap_seconds" not in blend:
        return WeightedBlend([sasrec, ease, recent, SequentialLinear()], weights)
    if blend["ctx_gap_seconds"] is None:  # valid kept one set of weights
        return ContextBlend([sasrec, ease, recent, SequentialLinear()], [weights])
    # The "came back" bucket has its own recent popularity (half-life) as a fifth model, at 0 in bucket 0.
    came_back = [blend["ctx_sasrec_weight"], blend["ctx_ease_weight"], 0.0, blend["ctx_slit_weight"],
                 blend["ctx_recent_weight"]]
    return ContextBlend(
        [sasrec, ease, recent, SequentialLinear(), RecentPopularity(blend["ctx_recent_half_life_days"])],
        [[*weights, 0.0], came_back], [blend["ctx_gap_seconds"]],
    )


def _tune_blend(
    sasrec: SASRecRecommender, valid: EvalTask, log: Callable[[str], None]
) -> tuple[dict[str, float], dict[str, float], float]:
    """Pick EASE's l2 and the blend weight on valid, with SASRec as fit on valid's train."""
    started = time.perf_counter()
    histories = valid.histories()
    sasrec_scores = sasrec.score(valid.users, histories)
    popularity = item_popularity(valid)
    best: tuple[float, dict[str, float], dict[str, float]] | None = None
    for point in BASELINE_GRIDS["ease"]:
        ease_scores = EASE(**point).fit(valid.train, valid.n_items).score(valid.users, histories)
        for weight in BLEND_WEIGHTS:
            blended = blend_scores(sasrec_scores, ease_scores, weight)
            metrics = summarize(user_metrics(blended, valid.targets, histories, K), valid.n_items, K, popularity)
            if best is None or metrics[SELECT_METRIC] > best[0]:
                best = (metrics[SELECT_METRIC], {"ease_l2": point["l2"], "blend_weight": weight}, metrics)
    assert best is not None
    log(f"sasrec+ease: best blend {best[1]} valid {SELECT_METRIC} {best[0]:.4f}")
    return best[1], best[2], time.perf_counter() - started


def _tune_recency_blend(
    sasrec: SASRecRecommender, valid: EvalTask, times: dict[str, list[int]], log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, float], float]:
    """Pick the EASE variant, SLIT's weight, the recent-popularity half-life and the weights on valid.

    A coordinate search, SASRec (as fit on valid's train) at weight 1: the EASE variant
    (``ease-recency`` grid) and its weight alone; SLIT's weight (EASE's re-tuned); recent
    popularity's half-life and weight (EASE's re-tuned); the EASE variant again; last,
    SASRec's own weight below 1. SLIT keeps :class:`SequentialLinear`'s defaults.
    """
    started = time.perf_counter()
    histories = valid.histories()
    popularity = item_popularity(valid)
    base = sasrec.score(valid.users, histories)
    eases = {
        tuple(point.values()): fit_model(EASE(**point), valid.train, valid.n_items, times).score(valid.users, histories)
        for point in BASELINE_GRIDS["ease-recency"]
    }
    recents = {
        p["half_life_days"]: fit_model(RecentPopularity(**p), valid.train, valid.n_items, times).score(
            valid.users, histories
        )
        for p in BASELINE_GRIDS["recentpop"]
    }
    slit = SequentialLinear().fit(valid.train, valid.n_items).score(valid.users, histories)
    W = RECENCY_BLEND_WEIGHTS
    # (ease variant, w_ease, w_slit, half-life, w_recent, w_sasrec)
    point = (next(iter(eases)), 0.0, 0.0, next(iter(recents)), 0.0, 1.0)
    best: tuple[float, tuple, dict[str, float]] | None = None

    def consider(candidate: tuple) -> None:
        nonlocal best
        key, w_ease, w_slit, half_life, w_recent, w_sasrec = candidate
        blended = blend_many([base, eases[key], slit, recents[half_life]], [w_sasrec, w_ease, w_slit, w_recent])
        metrics = summarize(user_metrics(blended, valid.targets, histories, K), valid.n_items, K, popularity)
        if best is None or metrics[SELECT_METRIC] > best[0]:
            best = (metrics[SELECT_METRIC], candidate, metrics)

    consider(point)
    for key in eases:
        for w in W:
            consider((key, w, *point[2:]))
    point = best[1]
    for w_slit in W:
        for w in W:
            consider((point[0], w, w_slit, *point[3:]))
    point = best[1]
    for half_life in recents:
        for w_recent in W[1:]:
            for w in W:
                consider((point[0], w, point[2], half_life, w_recent, point[5]))
    point = best[1]
    for key in eases:
        for w in W:
            consider((key, w, *point[2:]))
    point = best[1]
    for w_sasrec in SASREC_BLEND_WEIGHTS:
        consider((*point[:5], w_sasrec))
    score_value, ((l2, decay, ease_half_life), w_ease, w_slit, half_life, w_recent, w_sasrec), metrics = best
    chosen = {
        "ease_l2": l2, "ease_input_decay": decay, "ease_half_life_days": ease_half_life, "blend_weight": w_ease,
        "slit_weight": w_slit, "recent_half_life_days": half_life, "recent_weight": w_recent,
        "sasrec_weight": w_sasrec,
    }
    log(f"sasrec+ease+slit+recentpop: best blend {chosen} valid {SELECT_METRIC} {score_value:.4f}")
    return chosen, metrics, time.perf_counter() - started


def _tune_context_blend(
    sasrec: SASRecRecommender, valid: EvalTask, times: dict[str, list[int]], gaps: np.ndarray,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, float], float]:
    """The recency blend (:func:`_tune_recency_blend`) for everyone, then weights for users who came back.

    For each threshold of ``CONTEXT_GAP_THRESHOLDS``, the users whose request gap
    exceeds it get their own SASRec / EASE / SLIT weights and recent-popularity
    half-life and weight (a grid on those users only, the EASE variant kept); the
    others keep the recency blend's weights. The best threshold is kept only if it
    gains ``CONTEXT_MIN_GAIN`` valid NDCG@10 over the one-bucket blend (else
    ``ctx_gap_seconds`` is None).
    """
    global_blend, global_metrics, seconds = _tune_recency_blend(sasrec, valid, times, log)
    started = time.perf_counter()
    histories = valid.histories()
    popularity = item_popularity(valid)
    ease = EASE(
        l2=global_blend["ease_l2"], input_decay=global_blend["ease_input_decay"],
        half_life_days=global_blend["ease_half_life_days"],
    )
    parts = {
        "sasrec": sasrec.score(valid.users, histories),
        "ease": fit_model(ease, valid.train, valid.n_items, times).score(valid.users, histories),
        "slit": SequentialLinear().fit(valid.train, valid.n_items).score(valid.users, histories),
    }
    recents = {
        p["half_life_days"]: fit_model(RecentPopularity(**p), valid.train, valid.n_items, times).score(
            valid.users, histories
        )
        for p in BASELINE_GRIDS["recentpop"]
    }
    global_weights = [global_blend["sasrec_weight"], global_blend["blend_weight"], global_blend["slit_weight"],
                      global_blend["recent_weight"]]
    global_recent = recents[global_blend["recent_half_life_days"]]
    models = [parts["sasrec"], parts["ease"], parts["slit"]]
    global_ndcg = user_metrics(
        blend_many([*models, global_recent], global_weights), valid.targets, histories, K
    ).ndcg
    # Standardised once: a blend of z-scores is then a weighted sum (what blend_many computes).
    z_models = [standardize_rows(m) for m in models]
    z_recents = {half_life: standardize_rows(m) for half_life, m in recents.items()}
    best_gain, best_choice = -np.inf, None
    for threshold in CONTEXT_GAP_THRESHOLDS:
        rows = np.nonzero(gaps > threshold)[0]
        if rows.size == 0:
            continue
        sub = [z[rows] for z in z_models]
        sub_targets, sub_histories = [valid.targets[r] for r in rows], [histories[r] for r in rows]
        baseline = global_ndcg[rows].sum()
        seen: set[tuple] = set()
        for half_life, recent in z_recents.items():
            sub_recent = recent[rows]
            for w_sasrec in CONTEXT_SASREC_WEIGHTS:
                for w_ease in RECENCY_BLEND_WEIGHTS:
                    for w_slit in RECENCY_BLEND_WEIGHTS:
                        for w_recent in RECENCY_BLEND_WEIGHTS:
                            weights = (w_sasrec, w_ease, w_slit, w_recent)
                            # Proportional weights rank alike, and without recent popularity its
                            # half-life is moot: score each distinct ranking once (the first wins ties).
                            scale = max(weights) or 1.0
                            key = (*(round(w / scale, 9) for w in weights), half_life if w_recent else None)
                            if key in seen:
                                continue
                            seen.add(key)
                            blended = _weighted_sum([*sub, sub_recent], weights)
                            total = user_metrics(blended, sub_targets, sub_histories, K).ndcg.sum()
                            gain = (total - baseline) / len(valid)
                            if gain > best_gain + 1e-12:
                                best_gain = gain
                                best_choice = (threshold, w_sasrec, w_ease, w_slit, half_life, w_recent)
    log(f"sasrec+ctx-blend: best came-back bucket {best_choice} valid gain {best_gain:+.4f}")
    chosen = {**global_blend, "ctx_gap_seconds": None}
    metrics = global_metrics
    if best_choice is not None and best_gain >= CONTEXT_MIN_GAIN:
        threshold, w_sasrec, w_ease, w_slit, half_life, w_recent = best_choice
        chosen.update({
            "ctx_gap_seconds": threshold, "ctx_sasrec_weight": w_sasrec, "ctx_ease_weight": w_ease,
            "ctx_slit_weight": w_slit, "ctx_recent_half_life_days": half_life, "ctx_recent_weight": w_recent,
        })
        buckets = gap_buckets(gaps, [threshold])
        blended = blend_by_bucket(
            [*models, global_recent, recents[half_life]],
            [[*global_weights, 0.0], [w_sasrec, w_ease, w_slit, 0.0, w_recent]], buckets,
        )
        metrics = summarize(user_metrics(blended, valid.targets, histories, K), valid.n_items, K, popularity)
    log(f"sasrec+ctx-blend: chosen {chosen} valid {SELECT_METRIC} {metrics[SELECT_METRIC]:.4f}")
    return chosen, metrics, seconds + time.perf_counter() - started


def _tune_title_weights(
    sasrec: SASRecRecommender, context: dict[str, Any], titles: Sequence[str], valid: EvalTask,
    times: dict[str, list[int]], gaps: np.ndarray, log: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, float], float]:
    """The title similarity's weight in each gap bucket of the blend ``context`` (sasrec+ctx-blend's settings).

    The other weights stay; each bucket's weight is the best of ``TITLE_WEIGHTS`` on
    its own valid users (a bucket's rows do not depend on the other's weights). Kept
    only if the buckets together gain ``CONTEXT_MIN_GAIN`` valid NDCG@10 (else 0).
    """
    started = time.perf_counter()
    histories = valid.histories()
    base = _blend_around(sasrec, context)
    assert isinstance(base, ContextBlend)
    # SASRec is already fit on valid's train: fit the others only.
    for model in base.models[1:]:
        fit_model(model, valid.train, valid.n_items, times)
    base_scores = base.score(valid.users, histories, gaps=gaps)
    title = TitleSimilarity(titles, TITLE_WINDOW, TITLE_DECAY).fit(valid.train, valid.n_items)
    z_title = standardize_rows(title.score(valid.users, histories))
    buckets = gap_buckets(gaps, base.gap_thresholds)
    base_ndcg = user_metrics(base_scores, valid.targets, histories, K).ndcg
    # A blend is a sum of z-scores: adding the title's z-scores times w is the 5-or-6-model blend.
    z_title = np.where(np.isfinite(z_title), z_title, 0.0)
    weights, gain = [0.0, 0.0], 0.0
    for b in range(len(base.bucket_weights)):
        rows = np.nonzero(buckets == b)[0]
        if rows.size == 0:
            continue
        sub_targets, sub_histories = [valid.targets[r] for r in rows], [histories[r] for r in rows]
        best = (base_ndcg[rows].sum(), 0.0)
        for w in TITLE_WEIGHTS[1:]:
            total = user_metrics(base_scores[rows] + w * z_title[rows], sub_targets, sub_histories, K).ndcg.sum()
            if total > best[0] + 1e-12:
                best = (total, w)
        weights[b] = best[1]
        gain += (best[0] - base_ndcg[rows].sum()) / len(valid)
    log(f"sasrec+ctx-blend+title: title weights per bucket {weights[:len(base.bucket_weights)]} "
        f"valid gain {gain:+.4f}")
    if gain < CONTEXT_MIN_GAIN:
        weights = [0.0, 0.0]
    chosen = {"title_window": TITLE_WINDOW, "title_decay": TITLE_DECAY, "title_weight": weights[0]}
    if len(base.bucket_weights) > 1:
        chosen["ctx_title_weight"] = weights[1]
    scores = base_scores + z_title * np.asarray(weights)[buckets][:, None]
    metrics = summarize(user_metrics(scores, valid.targets, histories, K), valid.n_items, K, item_popularity(valid))
    log(f"sasrec+ctx-blend+title: chosen {chosen} valid {SELECT_METRIC} {metrics[SELECT_METRIC]:.4f}")
    return chosen, metrics, time.perf_counter() - started


def _weighted_sum(z_scores: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum_k weights[k] * z_scores[k]`` of already standardised scores; -inf in any input stays -inf
    (:func:`~aisys.models.blend_tuning.blend_z_scores` with the same weights for every row)."""
    return blend_z_scores(z_scores, np.tile(np.asarray(weights, np.float64), (z_scores[0].shape[0], 1)))


def top_items(scores: np.ndarray, histories: list[list[int]], depth: int = EXPORT_DEPTH) -> np.ndarray:
    """Each user's ``depth`` best item indices, best first (ties: lower index first).

    Known-history items and padding are never listed; a user with fewer than
    ``depth`` candidates gets 0 (no item) in the remaining columns.
    """
    from aisys.evaluation.ranking import masked_scores

    masked = masked_scores(scores, histories)
    depth = min(depth, masked.shape[1] - 1)
    order = np.argsort(-masked, axis=1, kind="stable")[:, :depth]
    return np.where(np.isfinite(np.take_along_axis(masked, order, axis=1)), order, 0)


EXPORT_SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string())])


def export_table(users: list[str], top: np.ndarray, item_ids: list[str]) -> pa.Table:
    """Top lists as rows ``user_id, rank (1-based), item_id`` with the catalogue's own ids (0 = no item: dropped)."""
    top = np.asarray(top, dtype=np.int64).reshape(len(users), -1)
    user_col, rank_col, item_col = [], [], []
    ids = np.asarray(item_ids, dtype=object)
    for user, row in zip(users, top):
        row = row[row > 0]
        user_col += [user] * row.size
        rank_col += range(1, row.size + 1)
        item_col += ids[row].tolist()
    return pa.Table.from_arrays(
        [pa.array(user_col, pa.string()), pa.array(rank_col, pa.int32()), pa.array(item_col, pa.string())],
        schema=EXPORT_SCHEMA,
    )


def write_export(result: EvaluationResult, item_ids: list[str], path: str | Path) -> Path:
    """Write the test task's top-100 lists of ``result`` as Parquet (parent folders created)."""
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(export_table(result.test_task.users, result.top_items, item_ids), path)
    return path


def load_movielens_interactions(cfg: AppConfig) -> tuple[Interactions, pa.Table]:
    """MovieLens-100K as protocol interactions over the whole catalogue, and the users' demographics."""
    from aisys.data.movielens import load_movielens, movielens_folder, read_item_ids, read_users

    folder = movielens_folder(cfg.data.movielens, cfg.paths.cache_dir)
    ml_cfg = cfg.data.movielens.model_copy(update={"path": str(folder)})
    events = load_movielens(ml_cfg, cfg.paths.cache_dir)
    return interactions_from_events(events, read_item_ids(folder)), read_users(folder)


def load_item_titles(cfg: AppConfig, item_ids: Sequence[str]) -> list[str]:
    """Titles aligned with the item indices: ``[title of item_ids[0] ("" for the padding), ...]``.

    Read from the MovieLens folder of ``cfg`` (``u.item`` or ``ml-100k.item``); an
    item without a title gets "" (similar to nothing).
    """
    from aisys.data.movielens import movielens_folder, read_item_titles

    titles = read_item_titles(movielens_folder(cfg.data.movielens, cfg.paths.cache_dir))
    return [titles.get(item, "") if item else "" for item in item_ids]
