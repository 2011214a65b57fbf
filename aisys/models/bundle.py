"""The model bundle: everything needed to serve a trained recommender.

A bundle is a folder holding the weights, the model's config, the item
vocabulary, item popularity (the fallback), the feature-set version and the
lineage (data snapshot, MLflow run, code version). Training writes one, the
registry logs it as an MLflow artifact, serving loads it back. Nothing else is
needed to rebuild the model.

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

_META_FILE = "bundle.json"
_WEIGHTS_FILE = "weights.pt"


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
        meta = asdict(self)
        meta.pop("state_dict")
        (folder / _META_FILE).write_text(json.dumps(meta))
        if self.state_dict is not None:
            torch.save(self.state_dict, folder / _WEIGHTS_FILE)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "ModelBundle":
        """Read a bundle written by :meth:`save`."""
        import torch

        folder = Path(folder)
        meta = json.loads((folder / _META_FILE).read_text())
        weights = folder / _WEIGHTS_FILE
        state = torch.load(weights, map_location="cpu", weights_only=True) if weights.exists() else None
        return cls(state_dict=state, **meta)

    def popularity_scores(self) -> np.ndarray:
        """Popularity per item index, with the padding index at -inf."""
        scores = np.asarray(self.item_popularity, dtype=np.float64).copy()
        scores[0] = -np.inf
        return scores
