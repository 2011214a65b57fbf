"""The recommender: a user's session -> model scores -> business rules -> top-k, with reasons.

Pure Python + numpy + torch: no Ray, no FastAPI. The Serve deployment and the
unit tests use it the same way. It holds one model version; which version
serves which user, and what happens when the model fails, is
:mod:`aisys.serving.service`'s job.

Decisions a user of the API will notice:

- **Model input**: the session's item ids mapped to this bundle's indices
  (ids it does not know are skipped), then
  :func:`~aisys.features.sequences.recent_window`: exactly the window training
  built with ``user_histories`` (see ``tests/unit/test_feature_parity.py``).
- **Scoring** goes through the bundle's scorer (:func:`aisys.models.multistage.build_scorer`):
  ``score_sessions(histories, gaps_s)``, one call per batch (one SASRec forward
  pass; for ``multistage`` one matrix product per closed-form generator). The gap
  is :func:`~aisys.features.context.seconds_since_last_event` of the session's
  ``last_event_time`` and the request's ``now`` (:class:`ScoreRequest`; the
  service passes its clock, this module never reads one, so tests are deterministic).
  A bundle with a learned ranking stage (``multistage-v2``) also reads ``now``: item
  popularity as of the request, from the bundle's item activity plus every live event
  the service hands to :meth:`Recommender.observe_event`; the blend's recent-popularity
  generators count those events too (live popularity, ``model.stages.live_popularity``).
- **A session with at least one known item** is ranked by the model,
  ``fallback=False``. Without a known item, popular items are served with
  ``fallback=True, fallback_reason="unknown_user"``; a bundle without weights
  serves popularity to everyone with ``fallback_reason="no_model"``.
- **Exclusion**: each request carries the item ids never to return (purchased
  or seen, per ``cfg.online.exclude``, plus out-of-stock items; see
  :mod:`aisys.serving.rules`). Padding is never returned.
- **Reasons**: every item says why (:func:`aisys.serving.rules.explain`).
- Ties rank by item index, so answers are deterministic.
- **Retrieval** (``retrieval="ivf_flat"``, see :func:`retrieval_options`): on a
  catalogue of at least ``retrieval_min_items`` items, a
  :class:`~aisys.retrieval.FaissIndex` over the model's item embeddings is built
  once, when the recommender is, and the model's top-k comes from it (the index
  over-fetches past the exclusions, and falls back to an exact scan when they
  swallow its candidates). Smaller catalogues, and models without item
  embeddings, are scored exactly, as before. ANN retrieval is a SASRec-only
  option: a ``multistage`` bundle is always scored exactly. See docs/retrieval.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

from aisys.features.context import seconds_since_last_event
from aisys.features.sequences import recent_window
from aisys.models.bundle import ModelBundle
from aisys.models.multistage import MULTISTAGE_KIND, SASRecScorer, build_scorer
from aisys.retrieval.index import DEFAULT_NPROBE, ItemIndex
from aisys.serving.rules import POPULAR_REASON, explain, mask_items, normalised_rows
from aisys.serving.session_store import UserSession

logger = logging.getLogger(__name__)

REASON_UNKNOWN_USER = "unknown_user"
REASON_NO_MODEL = "no_model"

RETRIEVAL_KINDS = ("exact", "ivf_flat")
# Below ~100k items exact scoring costs about a millisecond (docs/retrieval.md): keep the exact path.
DEFAULT_RETRIEVAL_MIN_ITEMS = 100_000


def retrieval_options(online: Any) -> dict[str, Any]:
    """The :class:`Recommender` keyword arguments that ``cfg.online`` (an ``OnlineConfig``) sets:
    ``Recommender(bundle, **retrieval_options(cfg.online))``."""
    return {
        "retrieval": online.retrieval,
        "retrieval_min_items": online.retrieval_min_items,
        "nprobe": online.nprobe,
    }


@dataclass(frozen=True)
class ScoredItem:
    """One recommended item, the score it was ranked by, and why it was picked."""

    item_id: str
    score: float
    category: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Recommendation:
    """A ranked list, and whether (and why) the popularity fallback produced it."""

    items: list[ScoredItem] = field(default_factory=list)
    fallback: bool = False
    fallback_reason: str | None = None

    def truncated(self, k: int) -> "Recommendation":
        """The first ``k`` items (a top-K list cut to k is the top-k list)."""
        return replace(self, items=self.items[:k])


@dataclass(frozen=True)
class ScoreRequest:
    """One user's request: their session, how many items, the item ids never to return, and the request time
    (``now``, seconds since the epoch; ``None``: unknown, so the gap since the user's last event is unknown)."""

    session: UserSession
    k: int
    exclude: frozenset[str] = frozenset()
    now: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"k must be a positive integer, got {self.k!r}")


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` highest finite scores, best first.

    Ties break by lower index, so results are deterministic. ``-inf`` marks an
    excluded item and is never returned, so fewer than ``k`` may come back.
    """
    valid = np.flatnonzero(np.isfinite(scores))
    if valid.size == 0:
        return valid, scores[valid]
    if valid.size > k:
        # Partition first: O(n) instead of sorting the whole catalogue. Items
        # tied with the k-th are all kept, so the tie-break below sees them.
        kth = np.partition(-scores[valid], k - 1)[k - 1]
        valid = valid[-scores[valid] <= kth]
    order = np.lexsort((valid, -scores[valid]))
    chosen = valid[order][:k]
    return chosen, scores[chosen]


class Recommender:
    """Top-k items from one :class:`ModelBundle` for sessions (see the module docstring).

    By default the bundle's scorer is rebuilt from it (:func:`~aisys.models.multistage.build_scorer`; none
    when the bundle has no weights). ``model`` overrides it: anything with
    ``score_sessions(histories, gaps_s) -> (B, n_items + 1)``, or a SASRec-like
    ``score_next(LongTensor (B, T)) -> (B, n_items + 1)``.

    ``retrieval`` (``"exact"`` or ``"ivf_flat"``), ``retrieval_min_items`` and
    ``nprobe``: see the module docstring. ANN retrieval also needs the model to
    be a SASRec-like module: ``item_emb`` (the output embeddings) and
    ``forward(windows) -> (B, T, D)`` hidden states, whose last position dotted
    with ``item_emb`` is ``score_next``. :attr:`index` is the built index, or
    ``None`` when scoring is exact.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        *,
        model: Any | None = None,
        torch_threads: int = 1,
        retrieval: str = "exact",
        retrieval_min_items: int = DEFAULT_RETRIEVAL_MIN_ITEMS,
        nprobe: int = DEFAULT_NPROBE,
    ) -> None:
        if retrieval not in RETRIEVAL_KINDS:
            raise ValueError(f"retrieval must be one of {', '.join(RETRIEVAL_KINDS)}; got {retrieval!r}")
        if retrieval_min_items < 1 or nprobe < 1:
            raise ValueError(f"retrieval_min_items and nprobe must be >= 1; got {retrieval_min_items}, {nprobe}")
        # More threads on a small shared box was measured much slower (STACK.md).
        torch.set_num_threads(torch_threads)
        self._threads = torch_threads
        self.bundle = bundle
        if model is None:
            scorer = build_scorer(bundle)
        elif callable(getattr(model, "score_sessions", None)):
            scorer = model
        else:
            scorer = SASRecScorer(model, bundle.max_seq_len)
        self.scorer = scorer
        # The SASRec inside (ANN retrieval and "similar to" reasons need its item embeddings).
        model = getattr(scorer, "model", None) if isinstance(scorer, SASRecScorer) else None
        if model is None and scorer is not None:
            model = getattr(getattr(scorer, "sasrec", None), "model", None)
        self.model = model if model is not None else scorer
        self.item_index = bundle.item_index()
        self._popularity = bundle.popularity_scores()
        if len(bundle.item_categories) == len(bundle.item_ids):
            self._categories: list[str | None] = list(bundle.item_categories)
        else:
            self._categories = [None] * len(bundle.item_ids)
        emb = getattr(getattr(self.model, "item_emb", None), "weight", None)
        self._unit_emb = normalised_rows(emb.detach().cpu().numpy()) if emb is not None else None
        self.index: ItemIndex | None = None
        if retrieval != "exact" and bundle.model_kind == MULTISTAGE_KIND:
            logger.info("retrieval=%s is a SASRec-only option: the multistage model is scored exactly", retrieval)
        elif retrieval != "exact" and self.model is not None and bundle.n_items >= retrieval_min_items:
            self.index = self._build_index(retrieval, emb, nprobe)

    def _build_index(self, kind: str, emb: Any, nprobe: int) -> ItemIndex | None:
        """An ANN index over the item embeddings (row ``i`` = item index ``i + 1``), or ``None``
        when the model has no embeddings to index."""
        if emb is None or not callable(getattr(self.model, "forward", None)):
            logger.warning("retrieval=%s needs a model with item_emb and forward(); scoring exactly", kind)
            return None
        from aisys.retrieval.index import make_index

        vectors = emb.detach().cpu().numpy()[1:]  # (n_items, D): row 0 is padding, never an item
        index = make_index(kind, nprobe=nprobe, threads=self._threads).build(vectors)
        logger.info("retrieval: %s index over %d items (%s)", kind, vectors.shape[0], index.params())
        return index

    @property
    def model_loaded(self) -> bool:
        """Whether personalised (model) scores can be served."""
        return self.model is not None

    def knows(self, item_id: str) -> bool:
        """Whether this bundle's vocabulary has the item."""
        return item_id in self.item_index

    def known_history(self, session: UserSession) -> list[int]:
        """The session's items as this bundle's indices, oldest first (unknown ids skipped)."""
        index = self.item_index
        return [index[item] for item in session.items if item in index]

    def model_input(self, session: UserSession) -> np.ndarray:
        """The window the model sees for this session: ``(max_seq_len,)`` int64."""
        return recent_window(self.known_history(session), self.bundle.max_seq_len)

    def context_key(self, session: UserSession, now: float | None) -> Any:
        """What of the request's context (the gap since the session's last event) changes this model's answer for
        it: a response cache keys on it, so a list is never reused across gap buckets. None: nothing does."""
        key = getattr(self.scorer, "context_key", None)
        return None if key is None else key(seconds_since_last_event(session.last_event_time, now))

    def observe_event(self, item_id: str, event_time: float | None) -> bool:
        """Tell a model that keeps online item features (live recent popularity, the ranking stage's item
        activity) of a live event.

        Returns whether it counted: the model keeps such features, knows the item and the event has a time.
        """
        observe = getattr(self.scorer, "observe", None)
        index = self.item_index.get(item_id)
        if observe is None or index is None or event_time is None:
            return False
        return bool(observe(index, float(event_time)))

    def recommend(self, session: UserSession, k: int, exclude: frozenset[str] = frozenset()) -> Recommendation:
        """Top-``k`` for one session (see the module docstring)."""
        return self.recommend_many([ScoreRequest(session, k, exclude)])[0]

    def recommend_many(self, requests: Sequence[ScoreRequest]) -> list[Recommendation]:
        """Answer many requests; every one with a known history is scored in one forward pass."""
        histories = [self.known_history(r.session) for r in requests]
        rows = [i for i, h in enumerate(histories) if h] if self.model is not None else []
        if self.index is not None:
            candidates = self._retrieve(histories, rows, requests)
        else:
            gaps = [seconds_since_last_event(requests[i].session.last_event_time, requests[i].now) for i in rows]
            now = [np.nan if requests[i].now is None else float(requests[i].now) for i in rows]
            scored = self._score(histories, rows, gaps, now)
            candidates = {i: self._top(scores, requests[i]) for i, scores in scored.items()}
        results = []
        for i, (request, history) in enumerate(zip(requests, histories)):
            if i in candidates:
                results.append(self._listed(*candidates[i], history, fallback_reason=None))
            else:
                reason = REASON_NO_MODEL if self.model is None and history else REASON_UNKNOWN_USER
                results.append(self.popular(request, reason))
        return results

    def popular(self, request: ScoreRequest, reason: str) -> Recommendation:
        """The popularity fallback for one request, flagged with ``reason``; never calls the model."""
        idx, values = self._top(self._popularity.copy(), request)
        return self._listed(idx, values, [], fallback_reason=reason)

    def _top(self, scores: np.ndarray, request: ScoreRequest) -> tuple[np.ndarray, np.ndarray]:
        """Item indices and scores of the request's top-k over a full score vector (modified in place)."""
        mask_items(scores, request.exclude, self.item_index)
        scores[0] = -np.inf  # padding is never an item
        return top_k(scores, int(request.k))

    def _listed(
        self, idx: np.ndarray, values: np.ndarray, history: list[int], fallback_reason: str | None
    ) -> Recommendation:
        """The ranked list for chosen item indices (best first), with reasons."""
        if fallback_reason is None:
            reasons = explain(idx, history[-self.bundle.max_seq_len :], self.bundle.item_ids,
                              unit_embeddings=self._unit_emb, categories=self._categories)
        else:
            reasons = [POPULAR_REASON] * len(idx)
        items = [
            ScoredItem(self.bundle.item_ids[j], float(v), self._categories[j], why)
            for j, v, why in zip(idx, values, reasons)
        ]
        return Recommendation(items=items, fallback=fallback_reason is not None, fallback_reason=fallback_reason)

    def _score(
        self, histories: list[list[int]], rows: list[int], gaps: Sequence[float], now: Sequence[float] | None = None
    ) -> dict[int, np.ndarray]:
        """Model scores ``(n_items + 1,)`` float64 for the given rows, in one batch (``gaps[n]``, ``now[n]``: row
        ``n``'s gap and request time; the time reaches only a scorer that reads it, ``uses_request_time``)."""
        if not rows:
            return {}
        batch = [histories[i] for i in rows]
        if getattr(self.scorer, "uses_request_time", False):
            now_s = np.full(len(rows), np.nan) if now is None else np.asarray(now, dtype=np.float64)
            scores = self.scorer.score_sessions(batch, np.asarray(gaps, dtype=np.float64), now_s)
        else:
            scores = self.scorer.score_sessions(batch, np.asarray(gaps, dtype=np.float64))
        matrix = np.asarray(scores, dtype=np.float64)  # (B, n_items + 1)
        expected = len(self.bundle.item_ids)
        if matrix.shape != (len(rows), expected):
            raise ValueError(f"the model's scores have shape {matrix.shape}; expected {(len(rows), expected)}")
        return {row: matrix[n].copy() for n, row in enumerate(rows)}

    def _retrieve(
        self, histories: list[list[int]], rows: list[int], requests: Sequence[ScoreRequest]
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Top-k item indices and scores per row through the ANN index, in one forward pass and one search."""
        if not rows:
            return {}
        windows = np.stack([recent_window(histories[i], self.bundle.max_seq_len) for i in rows])  # (B, T)
        with torch.inference_mode():
            hidden = self.model(torch.from_numpy(windows))[:, -1, :]  # (B, D): what score_next dots with item_emb
        queries = hidden.detach().to(torch.float32).cpu().numpy()
        index = self.item_index
        # Index ids are item index - 1 (padding is not in the index); unknown ids are not in the catalogue.
        exclude = [[index[item] - 1 for item in requests[i].exclude if item in index] for i in rows]
        k = max(int(requests[i].k) for i in rows)
        scores, ids = self.index.search(queries, k, exclude=exclude)  # (B, k) each, -1 / -inf pad
        out = {}
        for n, row in enumerate(rows):
            keep = ids[n] >= 0
            idx, values = ids[n][keep] + 1, scores[n][keep].astype(np.float64)
            order = np.lexsort((idx, -values))[: int(requests[row].k)]  # ties by item index, like top_k
            out[row] = (idx[order], values[order])
        return out
