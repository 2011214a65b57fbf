"""Train the multi-stage model: SASRec on Ray Train, the closed-form generators as Ray tasks, the blend on valid.

On the snapshot's leave-last-one-out split (:mod:`aisys.training.pipeline` makes it):

1. every closed-form generator (:mod:`aisys.models.stages`) is fit twice as Ray tasks (``num_cpus=1``),
   submitted before SASRec so they run beside it: on ``split.train`` (for tuning) and on train + valid
   (for the bundle). Nothing is ever fit on the test item: the gate's holdout is that item;
2. SASRec trains on Ray Train exactly as for ``model.kind: sasrec``
   (:func:`~aisys.training.ray_train.train_with_ray`, valid per epoch);
3. the blend (:func:`~aisys.models.blend_tuning.tune_blend`) is tuned on the valid targets with every
   generator fit on ``split.train``, each user's gap = valid target's time - newest train event's time;
4. the scorer of the bundle (SASRec + generators fit on train + valid + the blend) is scored on test
   through :meth:`~aisys.models.multistage.MultistageScorer.score_sessions`, the code serving runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from aisys.config import AppConfig
from aisys.features.context import seconds_since_last_event
from aisys.models.baselines import standardize_rows
from aisys.models.blend_tuning import BlendChoice, tune_blend
from aisys.models.multistage import SASREC_STAGE, MultistageScorer, SASRecScorer
from aisys.models.stages import StageSpec, fit_stage, score_stage, stage_specs

logger = logging.getLogger(__name__)
EVAL_K = 10


@dataclass
class MultistageFit:
    """What training produced: the bundle's parts, the tuned blend, and the seconds each step took."""

    specs: list[StageSpec]
    arrays: dict[str, np.ndarray]  # fit on train + valid (the bundle's)
    blend: BlendChoice
    scorer: MultistageScorer
    seconds: dict[str, float] = field(default_factory=dict)


def score_sessions_metrics(
    scorer: Any, histories: Sequence[Sequence[int]], targets: np.ndarray, gaps: np.ndarray, k: int = EVAL_K,
    item_popularity: Sequence[float] | None = None, batch_size: int = 256,
) -> dict[str, float]:
    """Full-ranking metrics of a scorer (``score_sessions``) on users with these histories, targets and gaps."""
    from aisys.evaluation.ranking import summarize_ranks, target_ranks, top_k_items

    if not len(histories):
        raise ValueError("no user to evaluate")
    ranks, recommended, n_cols = [], [], 0
    for start in range(0, len(histories), batch_size):
        hist = [list(h) for h in histories[start : start + batch_size]]
        scores = np.asarray(scorer.score_sessions(hist, gaps[start : start + batch_size]), dtype=np.float64)
        n_cols = scores.shape[1]
        ranks.append(target_ranks(scores, np.asarray(targets[start : start + batch_size], np.int64), hist))
        recommended.append(top_k_items(scores, k, hist))
    return summarize_ranks(np.concatenate(ranks), np.concatenate(recommended), n_cols - 1, k, item_popularity)


def valid_and_test_gaps(
    times: Mapping[str, Sequence[float]], valid_users: Sequence[str], test_users: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Each evaluated user's request gap (``h`` their history): valid = time of ``h[-2]`` - time of ``h[-3]``;
    test = time of ``h[-1]`` - time of ``h[-2]``."""
    valid = np.array([seconds_since_last_event(times[u][-3], times[u][-2]) for u in valid_users], np.float64)
    test = np.array([seconds_since_last_event(times[u][-2], times[u][-1]) for u in test_users], np.float64)
    return valid, test


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
) -> tuple[Any, MultistageFit]:
    """Fit every stage and tune the blend (see the module docstring); returns SASRec's result and the fit.

    ``train_sasrec()`` runs Ray Train and returns its result; ``sasrec_scorer(result)`` builds its scorer.
    Ray must be up (the caller's ``init_ray``): the generator fits are submitted before SASRec starts.
    """
    import ray

    stages_cfg = cfg.model.stages
    specs = stage_specs(stages_cfg, n_items, titles is not None)
    train = {u: list(seq) for u, seq in split.train.items()}
    train_times = {u: list(times[u][: len(seq)]) for u, seq in train.items()}
    # Train + valid: everything but each evaluated user's last (test) item; short users are wholly train already.
    full = {u: list(seq) for u, seq in train.items()}
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
    valid_gaps, test_gaps = valid_and_test_gaps(times, valid.users, split.test.users)
    z = {SASREC_STAGE: _z(sasrec.score_sessions(valid.histories))}
    for spec in specs:
        z[spec.name] = _z(score_stage(spec, fitted[("train", spec.name)], valid.histories))
    blend = tune_blend(
        z, valid.targets, valid.histories, valid_gaps, weight_grid=stages_cfg.weight_grid,
        base_weight_grid=stages_cfg.sasrec_weight_grid, gap_thresholds=stages_cfg.gap_thresholds_s,
        min_gain=stages_cfg.min_gain,
    )
    seconds["tune"] = time.perf_counter() - started
    logger.info("multistage blend: %s (valid ndcg@10 %.4f)", blend.to_dict(), blend.valid_ndcg)
    arrays = {name: fitted[("full", name)] if ("full", name) in fitted else fitted[("train", name)]
              for name in blend.active_stages() if name != SASREC_STAGE}
    used = [spec for spec in specs if spec.name in arrays]
    scorer = MultistageScorer(sasrec, used, arrays, blend)
    return result, MultistageFit(used, arrays, blend, scorer, seconds)


def _z(scores: np.ndarray) -> np.ndarray:
    return standardize_rows(scores)
