"""One scoring interface for every model kind: ``score_sessions(histories, gaps_s) -> (B, n_items + 1)``.

- :class:`SASRecScorer`: SASRec's next-item scores for each history's recent window (ignores the gaps).
- :class:`MultistageScorer`: SASRec plus the closed-form generators of :mod:`aisys.models.stages`,
  each standardised per user and blended with the weights of the user's gap bucket
  (:class:`~aisys.models.blend_tuning.BlendChoice`, tuned on valid at training).
- :class:`RankedMultistageScorer` (``multistage-v2``): that blend, then a LightGBM ranker over the candidates'
  features (:mod:`aisys.models.ranker`), with item popularity as of the request kept current online.

Histories are item indices of the model's vocabulary, oldest first; ``gaps_s[u]`` is the seconds
from user ``u``'s newest event to the request (:func:`aisys.features.context.seconds_since_last_event`;
NaN when unknown: bucket 0). Column 0 (padding) is -inf. :func:`build_scorer` rebuilds the scorer
of any known bundle; the serving :class:`~aisys.serving.recommender.Recommender`, the gate's holdout
and training's test metrics all score through it, so what is measured is what serves.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from aisys.features.activity import ItemActivity, category_matrix
from aisys.features.candidates import candidate_features, feature_names
from aisys.features.sequences import recent_window
from aisys.models.baselines import standardize_rows
from aisys.models.blend_tuning import BlendChoice, blend_z_scores
from aisys.models.bundle import (
    MULTISTAGE_RANKER_FEATURE_SET_VERSION,
    ModelBundle,
    UnknownBundleVersion,
    check_bundle_version,
)
from aisys.models.context_blend import gap_buckets
from aisys.models.ranker import (
    SERVABLE_RANKER_FEATURE_SETS,
    LearnedRanker,
    RankerFeatureSetError,
    ranked_with_fallback,
    ranker_from_document,
)
from aisys.models.stages import StageSpec, score_stage

MULTISTAGE_KIND = "multistage"
# The bundle's model_config key holding the time (seconds) its recent-popularity arrays are decayed to: present,
# those generators are live (MultistageScorer); absent (older bundles, live_popularity off), they stay as trained.
POPULARITY_AS_OF = "popularity_as_of"
SASREC_STAGE = "sasrec"
BLEND_SCORES = "blend"  # the blend's score matrix, as the ranking stage's features name it
# Each score matrix's top items that the ranking stage reorders (their union; docs/evaluation.md screened 50).
DEFAULT_RANKER_DEPTH = 50


class SASRecScorer:
    """``score_sessions`` over anything with ``score_next(LongTensor (B, T)) -> (B, n_items + 1)``."""

    def __init__(self, model: Any, max_seq_len: int) -> None:
        self.model, self.max_seq_len = model, max_seq_len

    @property
    def item_emb(self) -> Any:
        """The model's item embeddings (for "similar to" reasons and ANN retrieval), if it has any."""
        return getattr(self.model, "item_emb", None)

    def windows(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """(B, max_seq_len) int64: each history's recent window (:func:`recent_window`, as in training)."""
        return np.stack([recent_window(h, self.max_seq_len) for h in histories])

    def score_sessions(
        self, histories: Sequence[Sequence[int]], gaps_s: np.ndarray | None = None, now_s: np.ndarray | None = None
    ) -> np.ndarray:
        """(B, n_items + 1) float64 next-item scores; the gaps and request times are not used."""
        import torch

        with torch.inference_mode():
            scores = self.model.score_next(torch.from_numpy(self.windows(histories)))  # (B, V)
        if torch.is_tensor(scores):
            return scores.detach().to(torch.float64).cpu().numpy()
        return np.asarray(scores, dtype=np.float64)


class MultistageScorer:
    """SASRec + closed-form generators, blended per gap bucket (see the module docstring).

    ``arrays[name]`` is the fitted array of generator ``specs[name]``; ``blend.stages`` names the
    blend's columns (``"sasrec"`` among them). Generators at weight 0 in every bucket are not scored (and
    need no spec or array).

    With ``popularity_as_of`` (the time the recent-popularity arrays are decayed to: the newest training event),
    the recent-popularity generators are **live**: seeded from those arrays into an
    :class:`~aisys.features.activity.ItemActivity`, every event :meth:`observe` is told of adds to them, and a
    request ranks by the counts as of the newest event seen (the same as if training had counted those events:
    ``tests/unit/test_live_popularity.py``). Without it (bundles trained before, or
    ``model.stages.live_popularity: false``) they stay the arrays as trained.
    """

    def __init__(
        self, sasrec: SASRecScorer, specs: Sequence[StageSpec], arrays: Mapping[str, np.ndarray], blend: BlendChoice,
        popularity_as_of: float | None = None,
    ) -> None:
        import scipy.sparse  # noqa: F401  (scoring needs it: import it now, not inside a replica's first request)

        self.sasrec, self.blend = sasrec, blend
        known = {spec.name: spec for spec in specs}
        active = blend.active_stages()
        unknown = [s for s in active if s != SASREC_STAGE and s not in known]
        if unknown:
            raise ValueError(f"the blend weighs generator(s) {unknown} that the model does not have")
        missing = [s for s in active if s != SASREC_STAGE and s not in arrays]
        if missing:
            raise ValueError(f"the blend weighs generator(s) {missing} whose arrays are missing")
        self.specs = {name: known[name] for name in active if name != SASREC_STAGE}
        self.arrays = {name: arrays[name] for name in self.specs}
        self.popularity, self.popularity_rows = _live_popularity(self.specs, self.arrays, popularity_as_of)
        columns = [blend.stages.index(name) for name in active]
        self.active = active
        self.bucket_weights = np.asarray(blend.bucket_weights, dtype=np.float64)[:, columns]  # (buckets, S)
        gap_buckets([], blend.gap_thresholds)  # validates the thresholds
        if self.bucket_weights.shape[0] != len(blend.gap_thresholds) + 1:
            raise ValueError(f"{len(blend.gap_thresholds)} gap thresholds need "
                             f"{len(blend.gap_thresholds) + 1} weight vectors, got {self.bucket_weights.shape[0]}")

    @property
    def item_emb(self) -> Any:
        """SASRec's item embeddings (for "similar to" reasons)."""
        return self.sasrec.item_emb

    @property
    def live_popularity(self) -> bool:
        """Whether the recent-popularity generators count the events :meth:`observe` is told of."""
        return self.popularity is not None

    def observe(self, item: int, time_s: float) -> bool:
        """Count a live interaction (item index, seconds) in the live recent-popularity generators; returns
        whether this scorer keeps any (False: nothing it ranks by changes with live events)."""
        if self.popularity is None:
            return False
        self.popularity.observe(item, time_s)
        return True

    def stage_scores(self, histories: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """Raw (B, V) scores of every generator the blend uses, by name."""
        out = {}
        live = self.popularity.decayed_counts() if self.popularity is not None else None
        for name in self.active:
            if name == SASREC_STAGE:
                out[name] = self.sasrec.score_sessions(histories)
            elif live is not None and name in self.popularity_rows:
                row = live[self.popularity_rows[name]].copy()
                row[0] = -np.inf
                out[name] = np.tile(row, (len(histories), 1))
            else:
                out[name] = score_stage(self.specs[name], self.arrays[name], histories)
        return out

    def context_key(self, gap_s: float) -> int:
        """What of the request's context changes this scorer's answer: the gap bucket (a response cache key)."""
        return int(gap_buckets([gap_s], self.blend.gap_thresholds)[0])

    def blend_scores(self, raw: Mapping[str, np.ndarray], gaps_s: np.ndarray | None) -> np.ndarray:
        """(B, V) blend of the raw :meth:`stage_scores`, each row weighted by its gap bucket."""
        n_rows = next(iter(raw.values())).shape[0]
        gaps = _per_row(gaps_s, n_rows, "gaps_s")
        z = [standardize_rows(raw[name]) for name in self.active]
        buckets = gap_buckets(gaps, self.blend.gap_thresholds)
        return blend_z_scores(z, self.bucket_weights[buckets])

    def score_sessions(
        self, histories: Sequence[Sequence[int]], gaps_s: np.ndarray | None = None, now_s: np.ndarray | None = None
    ) -> np.ndarray:
        """(B, n_items + 1) float64 blended scores; ``gaps_s`` (B,) picks each row's bucket (None: all NaN)."""
        _per_row(gaps_s, len(histories), "gaps_s")
        return self.blend_scores(self.stage_scores(histories), gaps_s)


def ranker_generators(active_stages: Sequence[str]) -> tuple[str, ...]:
    """The score matrices the ranking stage reads, in order: the blend, then each generator the blend uses."""
    return (BLEND_SCORES, *active_stages)


class RankedMultistageScorer:
    """The multistage blend, then the learned ranking stage over the candidates (``multistage-v2``).

    Candidates are the union of the blend's and each active generator's top ``depth`` items; their features are
    :func:`~aisys.features.candidates.candidate_features` with the item activity as of the request
    (:class:`~aisys.features.activity.ItemActivity`, kept current by :meth:`observe`); the ranker orders them and
    every other item follows in the blend's order. ``now_s[u]`` is the request time (NaN or None: as of the
    newest event the activity saw).
    """

    uses_request_time = True

    def __init__(
        self, multistage: MultistageScorer, ranker: LearnedRanker, activity: ItemActivity,
        categories: np.ndarray | None, depth: int,
    ) -> None:
        if depth < 1:
            raise ValueError(f"the ranking stage's candidate depth must be >= 1, got {depth}")
        expected = feature_names(ranker_generators(multistage.active), activity.feature_names)
        if tuple(ranker.names) != expected:
            raise RankerFeatureSetError(
                f"the bundle's ranker reads {len(ranker.names)} features that do not match the {len(expected)} its "
                f"blend and generators give ({', '.join(ranker_generators(multistage.active))}): retrain the model"
            )
        self.multistage, self.ranker, self.activity = multistage, ranker, activity
        self.categories, self.depth = categories, depth

    @property
    def sasrec(self) -> SASRecScorer:
        return self.multistage.sasrec

    @property
    def item_emb(self) -> Any:
        return self.multistage.item_emb

    def context_key(self, gap_s: float) -> tuple[int, int]:
        """The blend's gap bucket and the gap's doubling of minutes (the ranker reads the gap itself): a cached
        answer is reused only while both stay the same (item popularity drifts within the cache's TTL)."""
        minutes = int(np.log2(1.0 + gap_s / 60.0)) if np.isfinite(gap_s) else -1
        return self.multistage.context_key(gap_s), minutes

    def observe(self, item: int, time_s: float) -> bool:
        """Count a live interaction (item index, seconds) in the online item activity and live popularity."""
        self.activity.observe(item, time_s)
        self.multistage.observe(item, time_s)
        return True

    def generator_scores(self, histories: Sequence[Sequence[int]], gaps_s: np.ndarray | None) -> dict[str, np.ndarray]:
        """The blend's and each active generator's (B, V) scores, named as the ranker's features read them."""
        raw = self.multistage.stage_scores(histories)
        return {BLEND_SCORES: self.multistage.blend_scores(raw, gaps_s), **raw}

    def score_sessions(
        self, histories: Sequence[Sequence[int]], gaps_s: np.ndarray | None = None, now_s: np.ndarray | None = None
    ) -> np.ndarray:
        """(B, n_items + 1) float64: the ranker's order on the candidates, the blend's after them."""
        gaps = _per_row(gaps_s, len(histories), "gaps_s")
        now = _per_row(now_s, len(histories), "now_s")
        scores = self.generator_scores(histories, gaps)
        features = candidate_features(scores, histories, now, gaps, self.activity, self.categories, self.depth)
        return ranked_with_fallback(self.ranker, features, scores[BLEND_SCORES])


def _live_popularity(
    specs: Mapping[str, StageSpec], arrays: Mapping[str, np.ndarray], as_of: float | None
) -> tuple[ItemActivity | None, dict[str, int]]:
    """The live counts of the active recent-popularity generators (one row each) and each one's row, or
    ``(None, {})`` when the bundle says no time to seed them at or the blend weighs none."""
    names = [name for name, spec in specs.items() if spec.kind == "recentpop"]
    if as_of is None or not names:
        return None, {}
    half_lives = [float(specs[name].settings["half_life_days"]) for name in names]
    counts = np.stack([np.asarray(arrays[name], dtype=np.float64).reshape(-1) for name in names])
    return ItemActivity.from_decayed_counts(counts, float(as_of), half_lives), {n: r for r, n in enumerate(names)}


def _per_row(values: np.ndarray | None, n_rows: int, name: str) -> np.ndarray:
    """(n_rows,) float64 of ``values`` (None: all NaN, unknown)."""
    out = np.full(n_rows, np.nan) if values is None else np.asarray(values, dtype=np.float64)
    if out.shape != (n_rows,):
        raise ValueError(f"{name} must have one entry per history ({n_rows}), got shape {out.shape}")
    return out


def _sasrec_model(config: Mapping[str, Any], state_dict: Mapping[str, Any]) -> Any:
    from aisys.models.sasrec import SASRec, SASRecConfig, strip_ddp_prefix

    model = SASRec(SASRecConfig(**config))
    model.load_state_dict(strip_ddp_prefix(state_dict))
    return model.eval()


def build_scorer(bundle: ModelBundle) -> SASRecScorer | MultistageScorer | RankedMultistageScorer | None:
    """The scorer of ``bundle`` by its kind and feature-set version; None when it carries no weights."""
    check_bundle_version(bundle.model_kind, bundle.feature_set_version)
    if bundle.state_dict is None:
        return None
    if bundle.model_kind != MULTISTAGE_KIND:
        from aisys.models.sasrec import build_model

        return SASRecScorer(build_model(bundle), bundle.max_seq_len)
    config = bundle.model_config
    sasrec = SASRecScorer(_sasrec_model(config["sasrec"], bundle.state_dict), bundle.max_seq_len)
    specs = [StageSpec(**spec) for spec in config["stages"]]
    scorer = MultistageScorer(sasrec, specs, bundle.arrays, BlendChoice.from_dict(config["blend"]),
                              popularity_as_of=config.get(POPULARITY_AS_OF))
    if bundle.feature_set_version != MULTISTAGE_RANKER_FEATURE_SET_VERSION:
        return scorer
    return _ranked_scorer(bundle, scorer)


def _ranked_scorer(bundle: ModelBundle, scorer: MultistageScorer) -> RankedMultistageScorer:
    """The ranking stage of a ``multistage-v2`` bundle around its blend."""
    if bundle.ranker is None or not bundle.activity:
        raise ValueError(f"a {MULTISTAGE_RANKER_FEATURE_SET_VERSION} bundle needs its ranker and item activity "
                         "(ranker.json, activity.npz): the bundle folder is incomplete, retrain or re-download it")
    found = bundle.ranker.get("feature_set") if isinstance(bundle.ranker, dict) else None
    if found not in SERVABLE_RANKER_FEATURE_SETS:
        raise UnknownBundleVersion(
            f"the bundle's ranker was trained on feature set {found!r}, unknown to this code; it serves "
            f"{', '.join(SERVABLE_RANKER_FEATURE_SETS)}: retrain the model or serve it with the aisys version that "
            "trained it"
        )
    ranker = ranker_from_document(bundle.ranker, found, "the bundle's ranker")
    has_categories = len(bundle.item_categories) == len(bundle.item_ids)
    categories = category_matrix(bundle.item_categories) if has_categories else None
    depth = int(bundle.model_config.get("ranking", {}).get("depth", DEFAULT_RANKER_DEPTH))
    return RankedMultistageScorer(scorer, ranker, ItemActivity.from_arrays(bundle.activity), categories, depth)


def bundle_arrays_nonfinite(bundle: ModelBundle) -> list[str]:
    """Names of the generator arrays holding a NaN or an infinity (the gate refuses such a bundle)."""
    return [name for name, array in bundle.arrays.items() if not np.isfinite(np.asarray(array)).all()]


__all__ = [
    "MULTISTAGE_KIND", "POPULARITY_AS_OF", "SASREC_STAGE", "BLEND_SCORES", "DEFAULT_RANKER_DEPTH", "SASRecScorer", "MultistageScorer",
    "RankedMultistageScorer", "ranker_generators", "build_scorer", "bundle_arrays_nonfinite",
]
