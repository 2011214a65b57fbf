"""One scoring interface for every model kind: ``score_sessions(histories, gaps_s) -> (B, n_items + 1)``.

- :class:`SASRecScorer`: SASRec's next-item scores for each history's recent window (ignores the gaps).
- :class:`MultistageScorer`: SASRec plus the closed-form generators of :mod:`aisys.models.stages`,
  each standardised per user and blended with the weights of the user's gap bucket
  (:class:`~aisys.models.blend_tuning.BlendChoice`, tuned on valid at training).

Histories are item indices of the model's vocabulary, oldest first; ``gaps_s[u]`` is the seconds
from user ``u``'s newest event to the request (:func:`aisys.features.context.seconds_since_last_event`;
NaN when unknown: bucket 0). Column 0 (padding) is -inf. :func:`build_scorer` rebuilds the scorer
of any known bundle; the serving :class:`~aisys.serving.recommender.Recommender`, the gate's holdout
and training's test metrics all score through it, so what is measured is what serves.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from aisys.features.sequences import recent_window
from aisys.models.baselines import standardize_rows
from aisys.models.blend_tuning import BlendChoice, blend_z_scores
from aisys.models.bundle import ModelBundle, check_bundle_version
from aisys.models.context_blend import gap_buckets
from aisys.models.stages import StageSpec, score_stage

MULTISTAGE_KIND = "multistage"
SASREC_STAGE = "sasrec"


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

    def score_sessions(self, histories: Sequence[Sequence[int]], gaps_s: np.ndarray | None = None) -> np.ndarray:
        """(B, n_items + 1) float64 next-item scores; the gaps are not used."""
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
    """

    def __init__(
        self, sasrec: SASRecScorer, specs: Sequence[StageSpec], arrays: Mapping[str, np.ndarray], blend: BlendChoice
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

    def stage_scores(self, histories: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """Raw (B, V) scores of every generator the blend uses, by name."""
        out = {}
        for name in self.active:
            if name == SASREC_STAGE:
                out[name] = self.sasrec.score_sessions(histories)
            else:
                out[name] = score_stage(self.specs[name], self.arrays[name], histories)
        return out

    def score_sessions(self, histories: Sequence[Sequence[int]], gaps_s: np.ndarray | None = None) -> np.ndarray:
        """(B, n_items + 1) float64 blended scores; ``gaps_s`` (B,) picks each row's bucket (None: all NaN)."""
        gaps = np.full(len(histories), np.nan) if gaps_s is None else np.asarray(gaps_s, dtype=np.float64)
        if gaps.shape != (len(histories),):
            raise ValueError(f"gaps_s must have one entry per history ({len(histories)}), got shape {gaps.shape}")
        raw = self.stage_scores(histories)
        z = [standardize_rows(raw[name]) for name in self.active]
        buckets = gap_buckets(gaps, self.blend.gap_thresholds)
        return blend_z_scores(z, self.bucket_weights[buckets])


def _sasrec_model(config: Mapping[str, Any], state_dict: Mapping[str, Any]) -> Any:
    from aisys.models.sasrec import SASRec, SASRecConfig, strip_ddp_prefix

    model = SASRec(SASRecConfig(**config))
    model.load_state_dict(strip_ddp_prefix(state_dict))
    return model.eval()


def build_scorer(bundle: ModelBundle) -> SASRecScorer | MultistageScorer | None:
    """The scorer of ``bundle`` by its kind; None when it carries no weights (popularity only)."""
    check_bundle_version(bundle.model_kind, bundle.feature_set_version)
    if bundle.state_dict is None:
        return None
    if bundle.model_kind != MULTISTAGE_KIND:
        from aisys.models.sasrec import build_model

        return SASRecScorer(build_model(bundle), bundle.max_seq_len)
    config = bundle.model_config
    sasrec = SASRecScorer(_sasrec_model(config["sasrec"], bundle.state_dict), bundle.max_seq_len)
    specs = [StageSpec(**spec) for spec in config["stages"]]
    return MultistageScorer(sasrec, specs, bundle.arrays, BlendChoice.from_dict(config["blend"]))


def bundle_arrays_nonfinite(bundle: ModelBundle) -> list[str]:
    """Names of the generator arrays holding a NaN or an infinity (the gate refuses such a bundle)."""
    return [name for name, array in bundle.arrays.items() if not np.isfinite(np.asarray(array)).all()]


__all__ = [
    "MULTISTAGE_KIND", "SASREC_STAGE", "SASRecScorer", "MultistageScorer", "build_scorer", "bundle_arrays_nonfinite",
]
