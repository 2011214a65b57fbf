"""Train the multi-stage model: SASRec on Ray Train, the closed-form generators as Ray tasks, the blend on valid.

On the snapshot's leave-last-one-out split, its validation as ``model.stages.validation`` says (next-item
requests, the returning users of a time cut, or both: :func:`aisys.quality.protocol.time_cut_validation`;
:mod:`aisys.training.pipeline` makes it):

1. every closed-form generator (:mod:`aisys.models.stages`) is fit twice as Ray tasks (``num_cpus=1``),
   submitted before SASRec so they run beside it: on ``split.train`` (for tuning) and on train + valid
   (for the bundle). Nothing is ever fit on the test item: the gate's holdout is that item;
2. SASRec trains on Ray Train exactly as for ``model.kind: sasrec``
   (:func:`~aisys.training.ray_train.train_with_ray`, valid per epoch);
3. the blend (:func:`~aisys.models.blend_tuning.tune_blend`) is tuned on the valid requests (a returning user's
   NDCG over their every later item) with every generator fit on ``split.train``, each request's gap = its first
   target's time - its history's newest;
4. the ranking stage (``model.stages.ranking``; :mod:`aisys.models.ranking_choice`): ``auto`` scores the blend
   and a LightGBM ranker out of fold on the valid users and keeps the ranker only if it wins; the ranker that
   ships is trained on every valid user, its item activity replayed from the train events as of each valid
   request, and the bundle's activity seeded from train + valid;
5. with ``model.stages.refit_sasrec`` (default), SASRec is trained again on train + valid for the first fit's best
   epoch + 1 epochs, after every choice above is taken (none is made on it), so the SASRec that ships, like the
   generators, knows each user's valid item;
6. the scorer of the bundle (SASRec and generators fit on train + valid + the blend [+ the ranker]) is scored on
   test through ``score_sessions``, the code serving runs (each test request at its target's time).

With ``model.stages.live_popularity`` (default) the bundle also records ``popularity_as_of``, the newest event its
recent-popularity arrays were fit on, so a replica goes on counting the events posted after training
(:class:`~aisys.models.multistage.MultistageScorer`); the blend is tuned on the arrays as trained.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from aisys.config import AppConfig
from aisys.features.activity import ItemActivity, PointInTimeActivity, activity_from_events, category_matrix
from aisys.features.context import seconds_since_last_event
from aisys.models.baselines import standardize_rows
from aisys.models.blend_tuning import BlendChoice, tune_blend
from aisys.models.bundle import MULTISTAGE_FEATURE_SET_VERSION, MULTISTAGE_RANKER_FEATURE_SET_VERSION
from aisys.models.multistage import (
    POPULARITY_AS_OF,
    SASREC_STAGE,
    MultistageScorer,
    RankedMultistageScorer,
    SASRecScorer,
)
from aisys.models.ranker import LearnedRanker, ranker_document
from aisys.models.ranking_choice import RankingDecision, ValidTask, choose_ranking, fit_final_ranker
from aisys.models.stages import StageSpec, fit_stage, score_stage, stage_specs

logger = logging.getLogger(__name__)
EVAL_K = 10


@dataclass
class MultistageFit:
    """What training produced: the bundle's parts, the tuned blend, and the seconds each step took."""

    specs: list[StageSpec]
    arrays: dict[str, np.ndarray]  # fit on train + valid (the bundle's)
    blend: BlendChoice
    scorer: MultistageScorer | RankedMultistageScorer  # what ships (the ranking stage's choice)
    seconds: dict[str, float] = field(default_factory=dict)
    ranking: RankingDecision | None = None
    ranker: LearnedRanker | None = None  # trained whenever the comparison ran, shipped only if chosen
    activity: ItemActivity | None = None
    depth: int = 50
    blend_scorer: MultistageScorer | None = None
    categories: np.ndarray | None = None  # (V, C) one-hot item categories (the ranker's affinity features)
    popularity_as_of: float | None = None  # live recent popularity: the time the bundle's counts are decayed to

    @property
    def feature_set_version(self) -> str:
        return MULTISTAGE_RANKER_FEATURE_SET_VERSION if self.ships_ranker else MULTISTAGE_FEATURE_SET_VERSION

    @property
    def ships_ranker(self) -> bool:
        return self.ranking is not None and self.ranking.chosen == "lgbm" and self.ranker is not None

    def bundle_fields(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(model_config additions, ModelBundle keyword additions)`` of the ranking stage (and live popularity)."""
        config: dict[str, Any] = {"ranking": {"depth": self.depth, **(self.ranking.to_dict() if self.ranking else {})}}
        if self.popularity_as_of is not None:
            config[POPULARITY_AS_OF] = self.popularity_as_of
        if not self.ships_ranker:
            return config, {"feature_set_version": self.feature_set_version}
        return config, {"feature_set_version": self.feature_set_version, "ranker": ranker_document(self.ranker),
                        "activity": self.activity.to_arrays()}

    def ranked_scorer(self) -> RankedMultistageScorer:
        """The blend of the bundle followed by the trained ranker, over a copy of the bundle's item activity."""
        if self.ranker is None or self.activity is None or self.blend_scorer is None:
            raise ValueError("no ranker was trained (model.stages.ranking: blend)")
        activity = ItemActivity.from_arrays(self.activity.to_arrays())
        return RankedMultistageScorer(self.blend_scorer, self.ranker, activity, self.categories, self.depth)

    def ranking_metrics(self) -> dict[str, float]:
        """The MLflow metrics of the choice: both out-of-fold valid NDCG@10 figures and whether the ranker ships."""
        if self.ranking is None:
            return {}
        out = {"ranking_ships_ranker": float(self.ships_ranker)}
        if self.ranking.blend_valid_ndcg is not None:
            out["valid_oof_blend_ndcg@10"] = self.ranking.blend_valid_ndcg
            out["valid_oof_ranker_ndcg@10"] = self.ranking.ranker_valid_ndcg
            out["valid_oof_paired_se"] = self.ranking.paired_se
        if self.ranker is not None:
            out["ranker_best_iteration"] = float(self.ranker.best_iteration)
        return out


def score_sessions_metrics(
    scorer: Any, histories: Sequence[Sequence[int]], targets: np.ndarray, gaps: np.ndarray, k: int = EVAL_K,
    item_popularity: Sequence[float] | None = None, batch_size: int = 256, now_s: np.ndarray | None = None,
) -> dict[str, float]:
    """Full-ranking metrics of a scorer (``score_sessions``) on users with these histories, targets and gaps
    (and request times ``now_s``, for a scorer that reads them: ``uses_request_time``)."""
    from aisys.quality.ranking import summarize_ranks, target_ranks, top_k_items

    if not len(histories):
        raise ValueError("no user to evaluate")
    timed = getattr(scorer, "uses_request_time", False) and now_s is not None
    ranks, recommended, n_cols = [], [], 0
    for start in range(0, len(histories), batch_size):
        hist = [list(h) for h in histories[start : start + batch_size]]
        rows = slice(start, start + batch_size)
        if timed:
            scores = scorer.score_sessions(hist, gaps[rows], np.asarray(now_s, dtype=np.float64)[rows])
        else:
            scores = scorer.score_sessions(hist, gaps[rows])
        scores = np.asarray(scores, dtype=np.float64)
        n_cols = scores.shape[1]
        ranks.append(target_ranks(scores, np.asarray(targets[start : start + batch_size], np.int64), hist))
        recommended.append(top_k_items(scores, k, hist))
    return summarize_ranks(np.concatenate(ranks), np.concatenate(recommended), n_cols - 1, k, item_popularity)


def request_gaps(
    times: Mapping[str, Sequence[float]], users: Sequence[str], histories: Sequence[Sequence[int]]
) -> np.ndarray:
    """Each request's gap: the time of the user's first event after ``history`` (the request) minus that of
    their newest event in it (loo valid: ``h[-2]``'s time - ``h[-3]``'s; test: ``h[-1]``'s - ``h[-2]``'s)."""
    return np.array([seconds_since_last_event(times[u][len(h) - 1], times[u][len(h)])
                     for u, h in zip(users, histories)], np.float64)


def request_times(
    times: Mapping[str, Sequence[float]], users: Sequence[str], histories: Sequence[Sequence[int]]
) -> np.ndarray:
    """Each request's time: that of the user's first event after ``history`` (the request's first target)."""
    return np.array([times[u][len(h)] for u, h in zip(users, histories)], dtype=np.float64)


def multistage_test_metrics(
    fit: MultistageFit, test: Any, times: Mapping[str, Sequence[float]], k: int = EVAL_K,
    item_popularity: Sequence[float] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Test metrics of the scorer that ships (each request at its target's time), and the MLflow figures of the
    ranking stage: the choice, both out-of-fold valid NDCG@10 and, when a ranker was trained, both test NDCG@10."""
    gaps = request_gaps(times, test.users, test.histories)
    now = request_times(times, test.users, test.histories)
    metrics = score_sessions_metrics(fit.scorer, test.histories, test.targets, gaps, k, item_popularity, now_s=now)
    logged = fit.ranking_metrics()
    if fit.ranker is not None and fit.blend_scorer is not None:
        shipped_is_ranker = fit.ships_ranker
        other = fit.blend_scorer if shipped_is_ranker else fit.ranked_scorer()
        other_metrics = score_sessions_metrics(other, test.histories, test.targets, gaps, k, item_popularity,
                                               now_s=now)
        ranker_m, blend_m = (metrics, other_metrics) if shipped_is_ranker else (other_metrics, metrics)
        logged.update({f"test_blend_ndcg@{k}": blend_m[f"ndcg@{k}"], f"test_ranker_ndcg@{k}": ranker_m[f"ndcg@{k}"]})
    return metrics, logged


def _fit_all_with_ray(
    ray: Any, specs: Sequence[StageSpec], datasets: Mapping[str, tuple[dict, dict]], n_items: int,
    titles: Sequence[str] | None,
) -> dict[tuple[str, str], Any]:
    """Submit one Ray task per (dataset, generator); returns the object refs (nothing waits here)."""
    remote_fit = ray.remote(num_cpus=1)(fit_stage)
    refs = {}
    for dataset, (train, times) in datasets.items():
        train_ref, times_ref = ray.put(train), ray.put(times)
        for spec in specs:
            if spec.kind == "title" and dataset != "train":
                continue  # the catalogue's own feature: the same array whatever the data
            refs[(dataset, spec.name)] = remote_fit.remote(spec, train_ref, times_ref, n_items, titles)
    return refs


def train_multistage(
    cfg: AppConfig,
    histories: Mapping[str, Sequence[int]],
    times: Mapping[str, Sequence[float]],
    split: Any,
    n_items: int,
    titles: Sequence[str] | None,
    train_sasrec: Callable[[], Any],
    sasrec_scorer: Callable[[Any], SASRecScorer],
    item_categories: Sequence[str | None] | None = None,
    refit_sasrec: Callable[[Any, Mapping[str, list[int]]], Any] | None = None,
) -> tuple[Any, MultistageFit]:
    """Fit every stage and tune the blend (see the module docstring); returns SASRec's result and the fit.

    ``train_sasrec()`` runs Ray Train and returns its result; ``sasrec_scorer(result)`` builds its scorer.
    Ray must be up (the caller's ``init_ray``): the generator fits are submitted before SASRec starts.
    With ``model.stages.refit_sasrec`` and a ``refit_sasrec(result, train_and_valid)`` (Ray Train again, on train +
    valid, for ``result``'s best epoch + 1 epochs), the SASRec that ships is that refit, made once every choice
    on valid is taken (step 5 of the module docstring); the returned result is the refit's weights with the first
    fit's history and best epoch.
    """
    result, fit, full = _train_and_choose(cfg, histories, times, split, n_items, titles, train_sasrec,
                                          sasrec_scorer, item_categories)
    if not (cfg.model.stages.refit_sasrec and refit_sasrec is not None):
        return result, fit
    started = time.perf_counter()
    refit = refit_sasrec(result, full)
    fit.seconds["sasrec_refit"] = time.perf_counter() - started
    sasrec = sasrec_scorer(refit)
    fit.blend_scorer = MultistageScorer(sasrec, fit.specs, fit.arrays, fit.blend, fit.popularity_as_of)
    fit.scorer = fit.ranked_scorer() if fit.ships_ranker else fit.blend_scorer
    return _with_weights(result, refit), fit


def _with_weights(result: Any, refit: Any) -> Any:
    """``result`` (the fit on train: its history and best epoch) carrying ``refit``'s weights."""
    from dataclasses import is_dataclass, replace

    if is_dataclass(result):
        return replace(result, state_dict=refit.state_dict)
    result.state_dict = refit.state_dict
    return result


def _train_and_choose(cfg, histories, times, split, n_items, titles, train_sasrec, sasrec_scorer, item_categories):
    """Steps 1-4 of the module docstring; returns SASRec's result, the fit and train + valid's sequences."""
    import ray

    stages_cfg = cfg.model.stages
    specs = stage_specs(stages_cfg, n_items, titles is not None)
    train = {u: list(seq) for u, seq in split.train.items()}
    train_times = {u: list(times[u][: len(seq)]) for u, seq in train.items()}
    # Train + valid: everything but each evaluated user's last (test) item (short users wholly); with a time-cut
    # validation ``split.train`` holds only the events before the cut, so this comes from ``histories``.
    full = {u: list(seq) for u, seq in histories.items() if seq}
    full.update({u: list(h) for u, h in zip(split.test.users, split.test.histories)})  # h = history[:-1]
    full_times = {u: list(times[u][: len(seq)]) for u, seq in full.items()}
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    refs = _fit_all_with_ray(ray, specs, {"train": (train, train_times), "full": (full, full_times)}, n_items, titles)
    result = train_sasrec()
    seconds["sasrec"] = time.perf_counter() - started
    fitted = {}
    for key, ref in refs.items():
        try:
            fitted[key] = ray.get(ref)
        except Exception as error:  # a generator that cannot fit on this data (e.g. SLIT without 2-item users)
            logger.warning("generator %s could not be fit on %s (%s): left out", key[1], key[0], error)
    specs = [spec for spec in specs if all(key in fitted for key in refs if key[1] == spec.name)]
    seconds["generators_wait"] = time.perf_counter() - started - seconds["sasrec"]

    started = time.perf_counter()
    sasrec = sasrec_scorer(result)
    valid = split.valid
    valid_gaps = request_gaps(times, valid.users, valid.histories)
    valid_times = request_times(times, valid.users, valid.histories)
    raw = {SASREC_STAGE: sasrec.score_sessions(valid.histories)}
    for spec in specs:
        raw[spec.name] = score_stage(spec, fitted[("train", spec.name)], valid.histories)
    # Live popularity: the bundle's recent-popularity counts go on counting the events served after training. The
    # blend is still tuned on the counts as trained: tuning on the counts as of each valid request (replayed from
    # the events before it) lost on both test splits, every seed (docs/training.md, "Live recent popularity").
    live = stages_cfg.live_popularity and any(spec.kind == "recentpop" for spec in specs)
    z = {name: _z(scores) for name, scores in raw.items()}
    tune_options = {"weight_grid": stages_cfg.weight_grid, "base_weight_grid": stages_cfg.sasrec_weight_grid,
                    "gap_thresholds": stages_cfg.gap_thresholds_s, "min_gain": stages_cfg.min_gain}
    blend = tune_blend(z, valid.targets, valid.histories, valid_gaps, all_targets=valid.all_targets, **tune_options)
    seconds["tune"] = time.perf_counter() - started
    logger.info("multistage blend: %s (valid ndcg@10 %.4f)", blend.to_dict(), blend.valid_ndcg)
    arrays = {name: fitted[("full", name)] if ("full", name) in fitted else fitted[("train", name)]
              for name in blend.active_stages() if name != SASREC_STAGE}
    used = [spec for spec in specs if spec.name in arrays]
    as_of = _newest(full_times) if live else None  # the "full" recent-popularity arrays are decayed to it
    scorer = MultistageScorer(sasrec, used, arrays, blend, as_of)
    fit = MultistageFit(used, arrays, blend, scorer, seconds, depth=stages_cfg.ranker_depth, blend_scorer=scorer,
                        popularity_as_of=as_of)
    if stages_cfg.ranking == "blend":
        fit.ranking = choose_ranking("blend", None)
        return result, fit, full

    started = time.perf_counter()
    fit.categories = category_matrix(item_categories) if item_categories else None
    train_arrays = {spec.name: fitted[("train", spec.name)] for spec in specs}
    task = ValidTask(
        raw=raw, histories=valid.histories, targets=np.asarray(valid.targets, dtype=np.int64), gaps=valid_gaps,
        request_times=valid_times,
        activity=PointInTimeActivity(n_items, *_events(train, train_times)),
        categories=fit.categories,
        tune=lambda rows: tune_blend({n: m[rows] for n, m in z.items()}, valid.targets[rows],
                                     [valid.histories[i] for i in rows], valid_gaps[rows],
                                     all_targets=None if valid.all_targets is None else [valid.all_targets[i]
                                                                                         for i in rows],
                                     **tune_options),
        blend_for=lambda choice, scores, gaps: MultistageScorer(sasrec, specs, train_arrays, choice).blend_scores(
            scores, gaps),
        depth=stages_cfg.ranker_depth, all_targets=valid.all_targets, users=valid.users,
    )
    from lightgbm.basic import LightGBMError

    try:
        fit.ranking = choose_ranking(stages_cfg.ranking, task, folds=stages_cfg.ranker_folds,
                                     min_gain=stages_cfg.ranker_min_gain, min_z=stages_cfg.ranker_min_z,
                                     seed=cfg.train.seed)
        seconds["ranking_choice"] = time.perf_counter() - started
        started = time.perf_counter()
        fit.ranker = fit_final_ranker(task, blend, seed=cfg.train.seed)
    except (ValueError, LightGBMError) as error:  # too few valid users, or none with a target among the candidates
        if stages_cfg.ranking == "lgbm":
            raise ValueError(f"model.stages.ranking is lgbm but no ranker could be trained on this snapshot's valid "
                             f"users ({error}); use ranking: auto or blend") from error
        logger.warning("no ranker could be trained (%s): the blend ships", error)
        fit.ranking, fit.ranker = RankingDecision(stages_cfg.ranking, "blend", reason=f"no ranker: {error}"), None
        return result, fit, full
    fit.activity = activity_from_events(n_items, *_events(full, full_times))
    seconds["ranker_fit"] = time.perf_counter() - started
    logger.info("ranking stage: %s", fit.ranking.to_dict())
    if fit.ships_ranker:
        fit.scorer = fit.ranked_scorer()
    return result, fit, full


def _newest(times: Mapping[str, Sequence[float]]) -> float:
    """The newest time in ``times`` (what :func:`~aisys.models.baselines.age_weights` decays to)."""
    return float(max(max(ts) for ts in times.values() if len(ts)))


def _events(sequences: Mapping[str, Sequence[int]], times: Mapping[str, Sequence[float]]) -> tuple[list, list]:
    """Every interaction of ``sequences`` as (items, times) lists."""
    items = [i for u in sequences for i in sequences[u]]
    stamps = [t for u in sequences for t in times[u]]
    return items, stamps


def _z(scores: np.ndarray) -> np.ndarray:
    return standardize_rows(scores)
