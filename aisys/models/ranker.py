"""The learned ranking stage: LightGBM LambdaRank over the candidate generators' per-candidate features.

The context blend and the generators (SASRec, EASE with recency, SLIT, recent
popularity, title similarity) each propose their best items; :func:`candidate_features`
(built in :mod:`aisys.features.candidates`, the one code path offline and online)
describes each (user, candidate) pair by their scores, z-scores and ranks, the
request's time gap, the item's age and popularity as of the request and the user's
genre affinity. The ranker orders each user's candidates (``benchmarks/ranker.py``
compares it with the blend; docs/evaluation.md, "Learned ranker"):

- :func:`fit_ranker`: LambdaRank (NDCG@10) on users' candidate groups with a
  relevance label, early-stopped on a held-out group of users.
- :func:`rank_candidates`: (B, n_items + 1) scores, the candidates scored by the
  booster and every other item at -inf.
- :func:`save_ranker` / :func:`load_ranker`: one JSON file holding LightGBM's text
  model (``Booster.model_to_string`` / ``Booster(model_str=...)``: no pickle, safe to
  load) with the feature set and feature names it was trained on; loading a file of
  another feature set is a :class:`RankerFeatureSetError`.

Pure numpy + lightgbm: no Ray, MLflow or web framework.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from aisys.features.candidates import CandidateFeatures, candidate_features, feature_names

__all__ = [
    "RANKER_FEATURE_SET", "RANKER_GENERATORS", "RANKER_FEATURE_NAMES", "RANKER_BASE_FEATURE", "LearnedRanker",
    "RankerSettings", "RankerFeatureSetError", "candidate_features", "candidate_labels", "fit_ranker",
    "rank_candidates", "save_ranker", "load_ranker", "ranker_document", "ranker_from_document",
    "fit_ranker_holding_out", "ranked_with_fallback", "ONLINE_RANKER_FEATURE_SET", "SERVABLE_RANKER_FEATURE_SETS",
]

# The version of what the ranker reads: bump it whenever a feature is added, removed, reordered or computed
# differently, so that a bundle trained on the old features is refused instead of silently mis-scored.
RANKER_FEATURE_SET = "ranker-v1"
# The shipped ranking stage's features (:mod:`aisys.models.multistage`): the blend's and every active generator's
# score/z/rank, the gap, the history length, the item's activity as of the request from decayed counters that a
# replica keeps current from posted events (:class:`aisys.features.activity.ItemActivity`), category affinity.
ONLINE_RANKER_FEATURE_SET = "ranker-v2"
# The feature sets a served bundle's ranker may name (ranker-v1's windowed counts exist offline only).
SERVABLE_RANKER_FEATURE_SETS = (ONLINE_RANKER_FEATURE_SET,)
# The score matrices ranker-v1 reads, in this order: the context blend (the stage the ranker refines) and the
# multi-stage model's candidate generators.
RANKER_GENERATORS = ("blend", "sasrec", "ease", "slit", "recentpop", "title")
RANKER_FEATURE_NAMES = feature_names(RANKER_GENERATORS)
# The residual ranker starts from the blend's score (LightGBM's init_score) and learns corrections to it.
RANKER_BASE_FEATURE = "blend_score"
_FILE_FORMAT = "aisys-ranker"


class RankerFeatureSetError(ValueError):
    """A ranker file (or feature matrix) whose feature set this code does not compute."""


@dataclass(frozen=True)
class RankerSettings:
    """LightGBM LambdaRank settings (screened on ML-100K validation: docs/evaluation.md, "Learned ranker")."""

    # Small trees, a slow rate and large leaves: ML-100K's valid task has one target per user (LOO), ~1,000
    # positives in all, and larger trees (15-31 leaves, rate 0.05) scored lower out of fold on temporal valid.
    num_leaves: int = 4
    learning_rate: float = 0.02
    min_data_in_leaf: int = 200
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    max_rounds: int = 500
    early_stopping_rounds: int = 100
    eval_at: int = 10
    seed: int = 0
    threads: int = 1

    def lightgbm_params(self) -> dict:
        """The parameter dict of ``lightgbm.train`` (deterministic, quiet)."""
        return {
            "objective": "lambdarank", "metric": "ndcg", "eval_at": [self.eval_at],
            "num_leaves": self.num_leaves, "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_data_in_leaf, "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction, "bagging_freq": 1 if self.bagging_fraction < 1 else 0,
            "lambda_l2": self.lambda_l2, "seed": self.seed, "num_threads": self.threads,
            "deterministic": True, "force_row_wise": True, "verbosity": -1,
        }


@dataclass
class LearnedRanker:
    """A trained booster and what it reads: the feature set's version and the feature names, in order."""

    booster: object  # lightgbm.Booster
    feature_set: str
    names: tuple[str, ...]
    best_iteration: int
    settings: RankerSettings
    base_feature: str | None = None  # a feature the trees correct (init_score), e.g. the blend's score
    base_scale: float = 1.0

    def predict(self, features: CandidateFeatures) -> np.ndarray:
        """(M,) scores of the candidates ``features`` (their names must be the ranker's)."""
        _check_names(features.names, self.names)
        if features.values.shape[0] == 0:
            return np.zeros(0)
        trees = np.asarray(self.booster.predict(features.values, num_iteration=self.best_iteration or None))
        return trees + _base_margin(features, self.base_feature, self.base_scale)


def candidate_labels(features: CandidateFeatures, targets: list[list[int]]) -> np.ndarray:
    """(M,) 1.0 where the candidate is one of its user's ``targets`` (``targets[row]``), else 0.0."""
    target_sets = [set(map(int, t)) for t in targets]
    return np.fromiter(
        (item in target_sets[row] for row, item in zip(features.rows.tolist(), features.items.tolist())),
        dtype=np.float64, count=features.rows.size,
    )


def fit_ranker(
    train: CandidateFeatures, train_labels: np.ndarray, stop: CandidateFeatures, stop_labels: np.ndarray,
    settings: RankerSettings | None = None, feature_set: str = RANKER_FEATURE_SET,
    base_feature: str | None = None, base_scale: float = 1.0,
) -> LearnedRanker:
    """LambdaRank on ``train``'s user groups, early-stopped on NDCG@``eval_at`` of the users in ``stop``.

    With ``base_feature`` the boosting starts from ``base_scale`` times that feature
    (LightGBM's ``init_score``): the trees learn corrections to an existing ranking,
    and early stopping keeps only the corrections that help held-out users (none: the
    base ranking itself). Users without a positive label teach LambdaRank nothing (and
    score NDCG 1 in LightGBM's metric): they are left out of both sets.
    """
    import lightgbm

    settings = settings or RankerSettings()
    _check_names(stop.names, train.names)
    if base_feature is not None and base_feature not in train.names:
        raise ValueError(f"base_feature {base_feature!r} is not one of the features {list(train.names)}")
    train_set = _ranking_dataset(lightgbm, train, train_labels, base_feature, base_scale)
    stop_set = _ranking_dataset(lightgbm, stop, stop_labels, base_feature, base_scale, reference=train_set)
    booster = lightgbm.train(
        settings.lightgbm_params(), train_set, num_boost_round=settings.max_rounds, valid_sets=[stop_set],
        callbacks=[lightgbm.early_stopping(settings.early_stopping_rounds, verbose=False)],
    )
    return LearnedRanker(booster, feature_set, tuple(train.names), int(booster.best_iteration), settings,
                         base_feature, base_scale)


def rank_candidates(ranker: LearnedRanker, features: CandidateFeatures, n_items: int) -> np.ndarray:
    """(B, n_items + 1) scores: the ranker's score on each user's candidates, -inf on every other item."""
    scores = np.full((features.n_users, n_items + 1), -np.inf)
    scores[features.rows, features.items] = ranker.predict(features)
    return scores


def ranker_document(ranker: LearnedRanker) -> dict:
    """``ranker`` as a JSON-able document: LightGBM's text model, its feature set, names and settings."""
    return {
        "format": _FILE_FORMAT, "feature_set": ranker.feature_set, "feature_names": list(ranker.names),
        "best_iteration": ranker.best_iteration, "settings": asdict(ranker.settings),
        "base_feature": ranker.base_feature, "base_scale": ranker.base_scale,
        "lightgbm_model": ranker.booster.model_to_string(num_iteration=ranker.best_iteration or None),
    }


def ranker_from_document(document: object, expected_feature_set: str = RANKER_FEATURE_SET,
                         where: str = "ranker document") -> LearnedRanker:
    """Inverse of :func:`ranker_document`; another feature set raises :class:`RankerFeatureSetError`."""
    import lightgbm

    if not isinstance(document, dict) or document.get("format") != _FILE_FORMAT:
        raise ValueError(f"{where} is not a ranker (no format={_FILE_FORMAT!r}): write it with save_ranker")
    found = document.get("feature_set")
    if found != expected_feature_set:
        raise RankerFeatureSetError(
            f"{where} was trained on feature set {found!r}, but this code computes "
            f"{expected_feature_set!r}: retrain the ranker (or serve with the code version that trained it)"
        )
    booster = lightgbm.Booster(model_str=document["lightgbm_model"])
    return LearnedRanker(
        booster, found, tuple(document["feature_names"]), int(document["best_iteration"]),
        RankerSettings(**document["settings"]), document.get("base_feature"), float(document.get("base_scale", 1.0)),
    )


def save_ranker(ranker: LearnedRanker, path: str | Path) -> Path:
    """Write ``ranker`` as one JSON file (:func:`ranker_document`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(ranker_document(ranker)))
    tmp.replace(path)
    return path


def load_ranker(path: str | Path, expected_feature_set: str = RANKER_FEATURE_SET) -> LearnedRanker:
    """The ranker saved at ``path``; a file of another feature set raises :class:`RankerFeatureSetError`."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"ranker file {path} is not readable JSON ({error}): write it with save_ranker") from error
    return ranker_from_document(document, expected_feature_set, f"ranker file {path}")


def fit_ranker_holding_out(
    features: CandidateFeatures, labels: np.ndarray, settings: RankerSettings, stop_share: float, seed: int,
    feature_set: str = RANKER_FEATURE_SET, base_feature: str | None = None,
) -> LearnedRanker:
    """:func:`fit_ranker` on ``features``' users, early-stopped on a random ``stop_share`` of them."""
    order = np.random.default_rng(seed).permutation(features.n_users)
    n_stop = max(1, int(round(stop_share * order.size)))
    stop, train = np.sort(order[:n_stop]), np.sort(order[n_stop:])
    return fit_ranker(features.take_users(train), labels[np.isin(features.rows, train)],
                      features.take_users(stop), labels[np.isin(features.rows, stop)], settings,
                      feature_set=feature_set, base_feature=base_feature)


def ranked_with_fallback(ranker: LearnedRanker, features: CandidateFeatures, fallback: np.ndarray) -> np.ndarray:
    """(B, V) scores: each user's candidates by the ranker, every other item after them in ``fallback``'s order.

    ``fallback`` is (B, V) (the blend's scores; -inf stays -inf): exclusions at serving time can remove
    candidates, and the list still fills from the blend rather than running short.
    """
    fallback = np.asarray(fallback, dtype=np.float64)
    out = fallback.copy()
    if features.rows.size == 0:
        return out
    predicted = ranker.predict(features)
    is_candidate = np.zeros(fallback.shape, dtype=bool)
    is_candidate[features.rows, features.items] = True
    lowest = np.full(features.n_users, np.inf)
    np.minimum.at(lowest, features.rows, predicted)
    rest = np.where(is_candidate | ~np.isfinite(fallback), -np.inf, fallback)
    top_rest = rest.max(axis=1)  # (B,)
    shift = np.where(np.isfinite(top_rest) & np.isfinite(lowest), lowest - 1.0 - top_rest, 0.0)
    out = np.where(np.isfinite(rest), rest + shift[:, None], -np.inf)
    out[features.rows, features.items] = predicted
    return out


def _base_margin(features: CandidateFeatures, base_feature: str | None, scale: float) -> np.ndarray:
    """(M,) ``scale`` times the ``base_feature`` column (0 where missing), or zeros without one."""
    if base_feature is None:
        return np.zeros(features.values.shape[0])
    column = features.values[:, features.names.index(base_feature)].astype(np.float64)
    return scale * np.where(np.isfinite(column), column, 0.0)


def _ranking_dataset(
    lightgbm, features: CandidateFeatures, labels: np.ndarray, base_feature: str | None = None,
    base_scale: float = 1.0, reference=None,
):
    """A LightGBM Dataset of the groups (users) that hold at least one positive label."""
    labels = np.asarray(labels, dtype=np.float64)
    if labels.shape != (features.rows.size,):
        raise ValueError(f"labels must have one entry per candidate ({features.rows.size}), got {labels.shape}")
    positives = np.bincount(features.rows, weights=labels, minlength=features.n_users)
    keep_users = np.nonzero(positives > 0)[0]
    if keep_users.size == 0:
        raise ValueError("no user has a relevant candidate: nothing to learn a ranking from (raise the depth)")
    keep = np.isin(features.rows, keep_users)
    sizes = np.bincount(features.rows[keep], minlength=features.n_users)
    init_score = _base_margin(features, base_feature, base_scale)[keep] if base_feature else None
    return lightgbm.Dataset(
        features.values[keep], label=labels[keep], group=sizes[sizes > 0], feature_name=list(features.names),
        init_score=init_score, reference=reference, free_raw_data=False,
    )


def _check_names(found: tuple[str, ...] | list[str], expected: tuple[str, ...]) -> None:
    if tuple(found) != tuple(expected):
        missing = [n for n in expected if n not in found]
        extra = [n for n in found if n not in expected]
        raise RankerFeatureSetError(
            f"the features do not match the ranker's ({len(found)} given, {len(expected)} expected; "
            f"missing {missing[:5]}, unexpected {extra[:5]}, or another order): build them with candidate_features "
            "from the generators the ranker was trained on"
        )
