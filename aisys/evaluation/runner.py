"""Evaluate one model on one split of the protocol: tune on valid, refit for test, score, export.

For each model a small grid of settings is fit on the valid task's train and
scored on valid (NDCG@10); the best settings are refit on the test task's
train (LOO: train + valid; temporal: everything before the cut) and scored on
test. SASRec validates every ``train.eval_every`` epochs up to
``train.epochs`` and keeps the best epoch count for the refit, which then
trains exactly that many epochs (no early stopping on test).

Everything here is plain numpy/torch in this process: Ray Train is the
production path for the same loop (``benchmarks/train_throughput.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from aisys.config import AppConfig
from aisys.evaluation.protocol import EvalTask, Interactions, interactions_from_events, item_popularity, split_tasks
from aisys.evaluation.ranking import UserMetrics, summarize, user_metrics
from aisys.evaluation.sequential import SASRecRecommender, SequentialSettings
from aisys.models.baselines import BPRMF, EASE, ItemKNN, MostPopular, Recommender, ScoreBlend, blend_scores

MODEL_NAMES = ("sasrec", "pop", "itemknn", "ease", "bpr", "sasrec+ease")
BLEND_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
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
    "temporal": ("train.loss_horizon=20", "train.loss_horizon_weight=1.0"),
}
EXPORT_DEPTH = 100
K = 10

# Settings grids tuned on valid (kept small: every point is a fit on 2 cores).
BASELINE_GRIDS: dict[str, list[dict[str, Any]]] = {
    "pop": [{}],
    "itemknn": [{"neighbors": n, "shrink": s} for n in (50, 200) for s in (0.0, 50.0)],
    "ease": [{"l2": l2} for l2 in (30.0, 100.0, 300.0, 1000.0)],
    "bpr": [{"dim": 64, "epochs": e, "l2": l2} for e in (20, 50) for l2 in (1e-5, 1e-3)],
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
    raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")


def score_task(model: Recommender, task: EvalTask, k: int = K) -> tuple[dict[str, float], UserMetrics, np.ndarray]:
    """Metrics of a fitted model on ``task``, per-user results and its raw (U, n_items + 1) scores."""
    if len(task) == 0:
        raise ValueError(f"task {task.name!r} has no user to evaluate")
    histories = task.histories()
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
) -> EvaluationResult:
    """Tune ``name`` on the valid task of ``split``, refit on the test task, score and rank (see module doc).

    With ``settings`` (e.g. ``EvaluationResult.settings`` of an earlier seed)
    tuning is skipped (``valid_metrics`` is then empty) and the model is refit
    with them: how the benchmark repeats a tuned model over seeds.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")
    log = log or (lambda message: None)
    valid, test = split_tasks(data, split)
    trace: dict[int, float] = {}
    tune_seconds = 0.0
    sasrec_valid_metrics: dict[str, float] = {}
    if settings is not None:
        chosen = dict(settings)
        valid_metrics: dict[str, float] = {}  # not tuned here: the settings come from an earlier run
        if name in ("sasrec", "sasrec+ease"):
            chosen = {**chosen, "seed": seed}
            model: Recommender = _sequential_model(chosen)
        else:
            model = make_baseline(name, chosen, seed, cfg.train.torch_threads)
    elif name in ("sasrec", "sasrec+ease"):
        base = sequential_settings(cfg, seed)

        def validate(model: SASRecRecommender) -> float:
            return score_task(model, valid)[0][SELECT_METRIC]

        tuner = SASRecRecommender(base)
        tune_seconds = _fit_timed(lambda: tuner.fit(valid.train, valid.n_items, validate))
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
        model = _sequential_model(chosen)
    else:
        best: tuple[float, dict[str, Any], dict[str, float]] | None = None
        for point in BASELINE_GRIDS[name]:
            candidate = make_baseline(name, point, seed, cfg.train.torch_threads)
            tune_seconds += _fit_timed(lambda: candidate.fit(valid.train, valid.n_items))
            metrics = score_task(candidate, valid)[0]
            log(f"{name} {split}: {point} valid {SELECT_METRIC} {metrics[SELECT_METRIC]:.4f}")
            if best is None or metrics[SELECT_METRIC] > best[0]:
                best = (metrics[SELECT_METRIC], point, metrics)
        assert best is not None
        _, chosen, valid_metrics = best
        model = make_baseline(name, chosen, seed, cfg.train.torch_threads)
    train_seconds = _fit_timed(lambda: model.fit(test.train, test.n_items))
    test_metrics, per_user, scores = score_task(model, test)
    top = top_items(scores, test.histories(), EXPORT_DEPTH)
    component = None
    if isinstance(model, ScoreBlend):
        # The blend's SASRec is exactly what `sasrec` alone would train (its epochs were
        # chosen on SASRec's own valid score): report it too, at no extra training.
        alone_metrics, alone_per_user, alone_scores = score_task(model.first, test)
        component = EvaluationResult(
            model="sasrec", split=split, seed=seed,
            settings={k: v for k, v in chosen.items() if k not in ("ease_l2", "blend_weight")},
            valid_metrics=sasrec_valid_metrics, test_metrics=alone_metrics,
            train_seconds=model.fit_seconds[0], tune_seconds=tune_seconds, test_task=test,
            per_user=alone_per_user, top_items=top_items(alone_scores, test.histories(), EXPORT_DEPTH),
            item_popularity=item_popularity(test), trace=trace,
        )
    return EvaluationResult(
        model=name, split=split, seed=seed, settings=dict(chosen), valid_metrics=valid_metrics,
        test_metrics=test_metrics, train_seconds=train_seconds, tune_seconds=tune_seconds, test_task=test,
        per_user=per_user, top_items=top, item_popularity=item_popularity(test), trace=trace, component=component,
    )


def _sequential_model(settings: dict[str, Any]) -> Recommender:
    """SASRec from its settings, blended with EASE when they carry ``ease_l2`` and ``blend_weight``."""
    settings = dict(settings)
    l2, weight = settings.pop("ease_l2", None), settings.pop("blend_weight", None)
    sasrec = SASRecRecommender(SequentialSettings(**settings))
    return sasrec if l2 is None else ScoreBlend(sasrec, EASE(l2=l2), weight)


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
