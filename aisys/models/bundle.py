"""The model bundle: everything needed to serve a trained recommender.

A bundle is a folder holding the weights, the model's config, the item
vocabulary, item popularity (the fallback), the feature-set version and the
lineage (data snapshot, MLflow run, code version). Training writes one, the
registry logs the whole folder as an MLflow artifact, serving loads it back.
Nothing else is needed to rebuild the model.

Files: ``bundle.json`` (config, vocabulary, popularity, titles, blend, lineage),
``weights.pt`` (SASRec's state dict, loaded with ``weights_only=True``) and, for
``model_kind="multistage"``, ``stages.npz`` (each closed-form generator's float32
array, loaded with ``allow_pickle=False``); a ``multistage-v2`` bundle adds ``ranker.json`` (the learned
ranking stage) and ``activity.npz`` (the item activity that seeds online popularity). Each kind has its feature-set
versions (:data:`FEATURE_SET_VERSIONS`); loading a bundle of a kind or version
this code does not know is an :class:`UnknownBundleVersion` naming what it knows.

Item indices: index 0 is padding; ``item_ids[i]`` is the external id of item
index ``i`` (``item_ids[0] == ""``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FEATURE_SET_VERSION = "seq-v1"
MULTISTAGE_FEATURE_SET_VERSION = "multistage-v1"
# multistage-v1 plus a learned ranking stage: ``ranker.json`` (LightGBM over aisys.features.candidates, with the
# ranker's own feature-set version inside) and ``activity.npz`` (the item activity counters that seed serving).
MULTISTAGE_RANKER_FEATURE_SET_VERSION = "multistage-v2"
# The feature-set versions each model kind's code can serve. A new encoding of a kind's inputs gets a new
# version here, so an old server refuses a bundle it would score wrongly instead of serving nonsense.
FEATURE_SET_VERSIONS: dict[str, tuple[str, ...]] = {
    "sasrec": (FEATURE_SET_VERSION,),
    "multistage": (MULTISTAGE_FEATURE_SET_VERSION, MULTISTAGE_RANKER_FEATURE_SET_VERSION),
}

_META_FILE = "bundle.json"
_WEIGHTS_FILE = "weights.pt"
_ARRAYS_FILE = "stages.npz"
_RANKER_FILE = "ranker.json"
_ACTIVITY_FILE = "activity.npz"


class UnknownBundleVersion(ValueError):
    """A bundle whose model kind or feature-set version this code does not know (retrain, or upgrade aisys)."""


def check_bundle_version(model_kind: str, feature_set_version: str) -> None:
    """Raise :class:`UnknownBundleVersion` unless this code knows ``model_kind`` and its ``feature_set_version``."""
    known = FEATURE_SET_VERSIONS.get(model_kind)
    if known is None:
        raise UnknownBundleVersion(
            f"bundle model_kind {model_kind!r} is unknown to this code; it knows "
            + ", ".join(f"{kind} ({'/'.join(versions)})" for kind, versions in FEATURE_SET_VERSIONS.items())
        )
    if feature_set_version not in known:
        raise UnknownBundleVersion(
            f"bundle feature_set_version {feature_set_version!r} of kind {model_kind!r} is unknown to this code; "
            f"it knows {', '.join(known)}: retrain the model or serve it with the aisys version that trained it"
        )


@dataclass
class ModelBundle:
    """A trained model plus its vocabulary, fallback and lineage."""

    model_kind: str
    model_config: dict[str, Any]
    item_ids: list[str]
    item_popularity: list[float]
    state_dict: dict[str, Any] | None = None
    item_categories: list[str | None] = field(default_factory=list)
    feature_set_version: str = FEATURE_SET_VERSION
    max_seq_len: int = 50
    lineage: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    # multistage: each closed-form generator's array by generator name (float32; see aisys.models.stages).
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    item_titles: list[str] = field(default_factory=list)  # aligned with item_ids when the title generator is on
    # multistage-v2: the learned ranker (aisys.models.ranker.ranker_document) and the item activity state
    # (aisys.features.activity.ItemActivity.to_arrays) that seeds the online popularity features.
    ranker: dict[str, Any] | None = None
    activity: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        """Number of real items (the padding index excluded)."""
        return len(self.item_ids) - 1

    def item_index(self) -> dict[str, int]:
        """External item id -> model index (padding excluded)."""
        return {item: i for i, item in enumerate(self.item_ids) if i > 0}

    def save(self, folder: str | Path) -> Path:
        """Write the bundle to ``folder`` (created if missing) and return it."""
        import torch

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        check_bundle_version(self.model_kind, self.feature_set_version)
        meta = {key: value for key, value in asdict(self).items()
                if key not in ("state_dict", "arrays", "ranker", "activity")}
        (folder / _META_FILE).write_text(json.dumps(meta))
        if self.ranker is not None:
            (folder / _RANKER_FILE).write_text(json.dumps(self.ranker))
        if self.activity:
            activity = {k: np.asarray(v, np.float64) for k, v in self.activity.items()}
            np.savez_compressed(folder / _ACTIVITY_FILE, **activity)
        if self.state_dict is not None:
            torch.save(self.state_dict, folder / _WEIGHTS_FILE)
        if self.arrays:
            np.savez_compressed(folder / _ARRAYS_FILE, **{k: np.asarray(v, np.float32) for k, v in self.arrays.items()})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "ModelBundle":
        """Read a bundle written by :meth:`save` (:class:`UnknownBundleVersion` for a kind or version not known)."""
        import torch

        folder = Path(folder)
        meta = json.loads((folder / _META_FILE).read_text())
        check_bundle_version(meta.get("model_kind", "?"), meta.get("feature_set_version", "?"))
        weights = folder / _WEIGHTS_FILE
        state = torch.load(weights, map_location="cpu", weights_only=True) if weights.exists() else None
        arrays = {}
        if (folder / _ARRAYS_FILE).exists():
            with np.load(folder / _ARRAYS_FILE, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        ranker = json.loads((folder / _RANKER_FILE).read_text()) if (folder / _RANKER_FILE).exists() else None
        activity = {}
        if (folder / _ACTIVITY_FILE).exists():
            with np.load(folder / _ACTIVITY_FILE, allow_pickle=False) as stored:
                activity = {name: stored[name] for name in stored.files}
        return cls(state_dict=state, arrays=arrays, ranker=ranker, activity=activity, **meta)

    def popularity_scores(self) -> np.ndarray:
        """Popularity per item index, with the padding index at -inf."""
        scores = np.asarray(self.item_popularity, dtype=np.float64).copy()
        scores[0] = -np.inf
        return scores
