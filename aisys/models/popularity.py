"""Most-popular baseline: the same (B, n_items + 1) score shape as SASRec.

Used as the offline baseline the model must beat and as serving's fallback
(cold-start users, or no model loaded).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np


class _HasPopularity(Protocol):
    item_popularity: Sequence[float]


def popularity_scores(vocab: _HasPopularity) -> np.ndarray:
    """Popularity per item index, shape ``(n_items + 1,)``, float64, padding index at -inf.

    ``vocab`` is a :class:`~aisys.features.sequences.Vocabulary` or a
    :class:`~aisys.models.bundle.ModelBundle` (anything with ``item_popularity``).
    """
    scores = np.asarray(vocab.item_popularity, dtype=np.float64).copy()
    if scores.ndim != 1 or scores.size < 1:
        raise ValueError("item_popularity must be a 1-d list with the padding entry at index 0")
    scores[0] = -np.inf
    return scores


class PopularityModel:
    """Scores every window with the same global popularity vector."""

    def __init__(self, vocab: _HasPopularity) -> None:
        self.scores = popularity_scores(vocab)

    @property
    def n_items(self) -> int:
        return self.scores.size - 1

    def score_next(self, seqs: Any) -> np.ndarray:
        """``(B, T)`` windows (numpy or torch) -> ``(B, n_items + 1)`` scores; ``[:, 0] = -inf``."""
        batch = len(seqs)
        return np.broadcast_to(self.scores, (batch, self.scores.size)).copy()
