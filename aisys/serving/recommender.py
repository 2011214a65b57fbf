"""The recommender: user history -> model scores -> top-k, with a popularity fallback.

Pure Python + torch: no Ray, no FastAPI. The Serve deployment and the unit
tests use it the same way.

Decisions a user of the API will notice:

- **Known user with a history**: the model scores every item from the user's
  :func:`~aisys.features.sequences.recent_window` (the same window training
  used). ``fallback=False``.
- **Unknown user, or empty history**: items by popularity
  (``bundle.item_popularity``), ``fallback=True, reason="unknown_user"``. A
  bundle without weights serves popularity to everyone with ``reason="no_model"``.
- **Exclusion** (``exclude_seen=True``): every item in the user's kept history
  is excluded, whatever the event type (views, carts, purchases, ratings). That
  covers purchases, and matches the next-*new*-item task the model is trained
  on. The kept history is the user's last ``history_limit`` items (default
  ``max(bundle.max_seq_len, 200)``), so items seen long ago may come back.
- **Events**: :meth:`Recommender.record_event` appends a known item to the
  user's history in the session store, so the very next call reflects it. Items
  the bundle does not know (launched after training) are accepted but cannot
  enter the model's sequence: they are logged and ``False`` is returned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from aisys.features.sequences import recent_window
from aisys.models.bundle import ModelBundle
from aisys.serving.session_store import InMemorySessionStore, SessionStore

logger = logging.getLogger(__name__)

DEFAULT_HISTORY_LIMIT = 200

REASON_UNKNOWN_USER = "unknown_user"
REASON_NO_MODEL = "no_model"


@dataclass(frozen=True)
class ScoredItem:
    """One recommended item with the score it was ranked by."""

    item_id: str
    score: float
    category: str | None = None


@dataclass(frozen=True)
class Recommendation:
    """A ranked list, and whether (and why) the popularity fallback produced it."""

    items: list[ScoredItem] = field(default_factory=list)
    fallback: bool = False
    reason: str | None = None

    def truncated(self, k: int) -> "Recommendation":
        """The first ``k`` items (a top-K list cut to k is the top-k list)."""
        return Recommendation(items=self.items[:k], fallback=self.fallback, reason=self.reason)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` highest finite scores, best first.

    Ties break by lower index, so results are deterministic. ``-inf`` marks an
    excluded item and is never returned, so fewer than ``k`` may come back.
    """
    valid = np.flatnonzero(np.isfinite(scores))
    if valid.size == 0:
        return valid, scores[valid]
    if valid.size > k:
        # Partition first: O(n) instead of sorting the whole catalogue.
        part = np.argpartition(-scores[valid], k - 1)[:k]
        valid = valid[part]
    order = np.lexsort((valid, -scores[valid]))
    chosen = valid[order]
    return chosen, scores[chosen]


class Recommender:
    """Serves top-k items for users from a :class:`ModelBundle` and their histories.

    ``histories`` maps user id -> item indices (oldest first), usually
    :func:`aisys.features.sequences.user_histories` of the bundle's snapshot.
    ``model`` is anything with ``score_next(LongTensor (B, T)) -> (B, n_items + 1)``;
    by default it is rebuilt from the bundle (none when the bundle has no weights).
    """

    def __init__(
        self,
        bundle: ModelBundle,
        histories: Mapping[str, Sequence[int]] | None = None,
        *,
        store: SessionStore | None = None,
        model: Any | None = None,
        history_limit: int | None = None,
        torch_threads: int = 1,
    ) -> None:
        # More threads on a small shared box was measured much slower (STACK.md).
        torch.set_num_threads(torch_threads)
        self.bundle = bundle
        self.store = store or InMemorySessionStore()
        self.history_limit = history_limit or max(bundle.max_seq_len, DEFAULT_HISTORY_LIMIT)
        if self.history_limit < bundle.max_seq_len:
            raise ValueError(
                f"history_limit ({self.history_limit}) must be >= bundle.max_seq_len ({bundle.max_seq_len})"
            )
        if model is None and bundle.state_dict is not None:
            from aisys.models.sasrec import build_model

            model = build_model(bundle)
        self.model = model
        self._item_index = bundle.item_index()
        self._popularity = bundle.popularity_scores()
        if len(bundle.item_categories) == len(bundle.item_ids):
            self._categories: list[str | None] = list(bundle.item_categories)
        else:
            self._categories = [None] * len(bundle.item_ids)
        if histories:
            self.store.bulk_load({u: list(h)[-self.history_limit :] for u, h in histories.items()})

    @property
    def model_loaded(self) -> bool:
        """Whether personalised (model) scores can be served."""
        return self.model is not None

    def history(self, user_id: str) -> list[int]:
        """The user's kept history (item indices, oldest first)."""
        return self.store.get(user_id)

    def model_input(self, user_id: str) -> np.ndarray:
        """The window the model sees for this user: ``(max_seq_len,)`` int64."""
        return recent_window(self.store.get(user_id), self.bundle.max_seq_len)

    def record_event(self, user_id: str, item_id: str, event_type: str | None = None) -> bool:
        """Add an interaction to the user's online history.

        Returns ``True`` when the item entered the history. An item the bundle
        does not know is accepted (the caller logs the raw event for the next
        training) but cannot be scored, so it is skipped here and ``False``
        comes back. All event types enter the history, as in training.
        """
        index = self._item_index.get(item_id)
        if index is None:
            logger.info("event for unknown item %r (user %r, %s): logged, not in the sequence",
                        item_id, user_id, event_type)
            return False
        self.store.append(user_id, index, self.history_limit)
        return True

    def recommend(self, user_id: str, k: int, exclude_seen: bool = True) -> Recommendation:
        """Top-``k`` items for one user (see the module docstring for the rules)."""
        return self.recommend_many([user_id], k, exclude_seen=exclude_seen)[0]

    def recommend_many(
        self, user_ids: Sequence[str], k: int, exclude_seen: bool = True
    ) -> list[Recommendation]:
        """Top-``k`` for many users; every user with a history is scored in one forward pass."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        histories = [self.store.get(user) for user in user_ids]
        scored_rows = [i for i, h in enumerate(histories) if h] if self.model is not None else []
        model_scores = self._score(histories, scored_rows)

        results: list[Recommendation] = []
        for i, history in enumerate(histories):
            if i in model_scores:
                scores, fallback, reason = model_scores[i], False, None
            else:
                scores = self._popularity.copy()
                fallback = True
                reason = REASON_NO_MODEL if self.model is None and history else REASON_UNKNOWN_USER
            if exclude_seen and history:
                scores[np.asarray(history, dtype=np.int64)] = -np.inf
            scores[0] = -np.inf  # padding is never an item
            idx, values = top_k(scores, int(k))
            items = [ScoredItem(self.bundle.item_ids[j], float(v), self._categories[j]) for j, v in zip(idx, values)]
            results.append(Recommendation(items=items, fallback=fallback, reason=reason))
        return results

    def _score(self, histories: list[list[int]], rows: list[int]) -> dict[int, np.ndarray]:
        """Model scores ``(n_items + 1,)`` float64 for the given rows, in one batch."""
        if not rows:
            return {}
        windows = np.stack([recent_window(histories[i], self.bundle.max_seq_len) for i in rows])  # (B, T)
        with torch.inference_mode():
            scores = self.model.score_next(torch.from_numpy(windows))  # (B, n_items + 1)
        matrix = scores.detach().to(torch.float64).cpu().numpy()
        expected = len(self.bundle.item_ids)
        if matrix.shape != (len(rows), expected):
            raise ValueError(f"model.score_next returned shape {matrix.shape}; expected {(len(rows), expected)}")
        return {row: matrix[n].copy() for n, row in enumerate(rows)}
