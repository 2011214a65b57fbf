"""Non-sequential baselines behind one small interface (numpy, no Ray, no torch).

Each model is built with its settings, then ``fit(train, n_items)`` on the
per-user train sequences of a protocol task (item indices ``1..n_items``) and
``score(users, histories) -> (U, n_items + 1)`` with column 0 (padding) at
-inf. ``histories`` are the users' known items; history-based models (item-kNN,
EASE) fold them in, BPR looks users up by id.

- :class:`MostPopular`: train interaction counts, the same list for everyone.
- :class:`ItemKNN`: cosine item-item similarity on the binary user-item matrix,
  the ``neighbors`` most similar items kept per item, with ``shrink``.
- :class:`EASE`: Steck (2019), the closed form ``B = I - P diagMat(1/diag(P))``
  with ``P = (X^T X + l2 I)^-1``.
- :class:`~aisys.models.bprmf.BPRMF` (its own module: the one that trains with torch): matrix factorisation
  trained with the BPR pairwise loss (one uniform negative per positive).
- :class:`RecentPopularity`: counts decayed by age (needs timestamps: ``fit(..., times=)``).
- :class:`SequentialLinear`: SLIT, a closed-form linear map from recent items to the next one.
- :class:`WeightedBlend`: a weighted sum of several models' per-user z-scores.

EASE can also weigh a user's recent items more (``input_decay``) and recent
co-occurrences more (``half_life_days``, needs timestamps). :func:`fit_model`
passes timestamps to the models that use them (``uses_times``).
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence

import numpy as np


class Recommender(Protocol):
    """What the evaluation runner needs from a model."""

    def fit(self, train: Mapping[str, Sequence[int]], n_items: int) -> "Recommender": ...

    def score(self, users: Sequence[str], histories: Sequence[Sequence[int]]) -> np.ndarray: ...


def interaction_matrix(histories: Sequence[Sequence[int]], n_items: int) -> np.ndarray:
    """Binary (U, n_items + 1) float32 matrix: 1 where a user interacted with an item (repeats count once)."""
    matrix = np.zeros((len(histories), n_items + 1), dtype=np.float32)
    for u, items in enumerate(histories):
        if len(items):
            items = np.asarray(items, dtype=np.int64)
            if items.min() < 1 or items.max() > n_items:
                raise ValueError(f"history of row {u} holds item indices outside 1..{n_items}")
            matrix[u, items] = 1.0
    return matrix


def _padding_to_minus_inf(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    scores[:, 0] = -np.inf
    return scores


def _require_fitted(model: object, attribute: str) -> None:
    if getattr(model, attribute, None) is None:
        raise RuntimeError(f"{type(model).__name__} is not fitted: call fit(train, n_items) first")


class MostPopular:
    """Rank items by train interaction count."""

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def fit(self, train: Mapping[str, Sequence[int]], n_items: int) -> "MostPopular":
        counts = np.zeros(n_items + 1, dtype=np.float64)
        for seq in train.values():
            np.add.at(counts, np.asarray(seq, dtype=np.int64), 1.0)
        self.counts = counts
        return self

    def score(self, users: Sequence[str], histories: Sequence[Sequence[int]]) -> np.ndarray:
        _require_fitted(self, "counts")
        return _padding_to_minus_inf(np.tile(self.counts, (len(users), 1)))


class ItemKNN:
    """Item-based collaborative filtering with cosine similarity."""

    def __init__(self, neighbors: int = 100, shrink: float = 10.0) -> None:
        if neighbors < 1:
            raise ValueError(f"ItemKNN.neighbors must be >= 1, got {neighbors}")
        if shrink < 0:
            raise ValueError(f"ItemKNN.shrink must be >= 0, got {shrink}")
        self.neighbors, self.shrink = neighbors, shrink
        self.similarity: np.ndarray | None = None
        self.n_items = 0

    def fit(self, train: Mapping[str, Sequence[int]], n_items: int) -> "ItemKNN":
        X = interaction_matrix(list(train.values()), n_items).astype(np.float64)
        co = X.T @ X  # (V, V) co-occurrence counts
        norms = np.sqrt(np.diag(co))
        sim = co / (np.outer(norms, norms) + self.shrink + 1e-12)
        np.fill_diagonal(sim, 0.0)
        if self.neighbors < n_items:
            # Keep each item's `neighbors` most similar items (per column: the items it votes for).
            # argpartition keeps exactly `neighbors` even when similarities tie.
            keep = np.argpartition(-sim, self.neighbors - 1, axis=0)[: self.neighbors]
            pruned = np.zeros_like(sim)
            np.put_along_axis(pruned, keep, np.take_along_axis(sim, keep, axis=0), axis=0)
            sim = pruned
        self.similarity, self.n_items = sim, n_items
        return self

    def score(self, users: Sequence[str], histories: Sequence[Sequence[int]]) -> np.ndarray:
        _require_fitted(self, "similarity")
        return _padding_to_minus_inf(interaction_matrix(histories, self.n_items) @ self.similarity)


def recency_matrix(histories: Sequence[Sequence[int]], n_items: int, decay: float) -> np.ndarray:
    """(U, n_items + 1) float64: a user's newest item weighs 1, the one before ``decay``, then ``decay**2``...

    ``decay = 1`` is the binary :func:`interaction_matrix`. A repeated item keeps its newest weight.
    """
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    binary = interaction_matrix(histories, n_items).astype(np.float64)  # validates the indices
    if decay == 1:
        return binary
    matrix = np.zeros_like(binary)
    for u, items in enumerate(histories):
        if len(items):
            items = np.asarray(items, dtype=np.int64)
            age = np.arange(items.size - 1, -1, -1, dtype=np.float64)  # 0 = newest
            np.maximum.at(matrix[u], items, decay**age)
    return matrix


def age_weights(times: Mapping[str, Sequence[int]], half_life_days: float | None) -> dict[str, np.ndarray]:
    """Per user, ``0.5 ** (age / half_life)`` of each interaction, age = days before the newest one in ``times``.

    ``half_life_days=None`` gives weight 1 everywhere.
    """
    if half_life_days is not None and half_life_days <= 0:
        raise ValueError(f"half_life_days must be > 0 or None, got {half_life_days}")
    newest = max((max(ts) for ts in times.values() if len(ts)), default=0)  # seconds
    out = {}
    for user, ts in times.items():
        ts = np.asarray(ts, dtype=np.float64)
        out[user] = np.ones_like(ts) if half_life_days is None else 0.5 ** ((newest - ts) / 86400.0 / half_life_days)
    return out


def _require_times(model: object, train: Mapping[str, Sequence[int]], times: Mapping[str, Sequence[int]] | None):
    if times is None:
        raise ValueError(f"{type(model).__name__}.fit needs times: each train interaction's timestamp")
    for user, seq in train.items():
        if len(times.get(user, ())) != len(seq):
            raise ValueError(f"{type(model).__name__}.fit: times[{user!r}] must have one timestamp per train item")


class RecentPopularity:
    """Train interactions weighted by ``0.5 ** (age / half_life_days)``, age measured from the newest one.

    What is popular *now*: on the global temporal split the targets are what users
    pick in the weeks after the cut. Needs each interaction's timestamp (``fit(..., times=)``).
    """

    uses_times = True

    def __init__(self, half_life_days: float = 30.0) -> None:
        if half_life_days <= 0:
            raise ValueError(f"RecentPopularity.half_life_days must be > 0, got {half_life_days}")
        self.half_life_days = half_life_days
        self.counts: np.ndarray | None = None

    def fit(
        self, train: Mapping[str, Sequence[int]], n_items: int, times: Mapping[str, Sequence[int]] | None = None
    ) -> "RecentPopularity":
        _require_times(self, train, times)
        weights = age_weights(times, self.half_life_days)
        counts = np.zeros(n_items + 1, dtype=np.float64)
        for user, seq in train.items():
            np.add.at(counts, np.asarray(seq, dtype=np.int64), weights[user])
        self.counts = counts
        return self

    def score(self, users: Sequence[str], histories: Sequence[Sequence[int]]) -> np.ndarray:
        _require_fitted(self, "counts")
        return _padding_to_minus_inf(np.tile(self.counts, (len(users), 1)))


class EASE:
    """Embarrassingly shallow autoencoder (closed form, L2 strength ``l2``).

    ``input_decay < 1`` weighs a user's recent items more when scoring (newest 1,
    the one before ``input_decay``, ...; see :func:`recency_matrix`): the next items
    follow the latest taste more than the oldest ratings.
    """

    def __init__(self, l2: float = 500.0, input_decay: float = 1.0, half_life_days: float | None = None) -> None:
        if l2 <= 0:
            raise ValueError(f"EASE.l2 must be > 0, got {l2}")
        if not 0 < input_decay <= 1:
            raise ValueError(f"EASE.input_decay must be in (0, 1], got {input_decay}")
        if half_life_days is not None and half_life_days <= 0:
            raise ValueError(f"EASE.half_life_days must be > 0 or None, got {half_life_days}")
        self.l2, self.input_decay, self.half_life_days = l2, input_decay, half_life_days
        self.uses_times = half_life_days is not None
        self.weights: np.ndarray | None = None
        self.n_items = 0

    def fit(
        self, train: Mapping[str, Sequence[int]], n_items: int, times: Mapping[str, Sequence[int]] | None = None
    ) -> "EASE":
        """Closed form on the binary user-item matrix; with ``half_life_days`` each interaction
        weighs ``0.5 ** (age / half_life_days)`` in the Gram matrix (recent co-occurrences count more)."""
        X = interaction_matrix(list(train.values()), n_items).astype(np.float64)
        if self.half_life_days is not None:
            _require_times(self, train, times)
            ages = age_weights(times, self.half_life_days)
            for u, (user, seq) in enumerate(train.items()):
                if len(seq):
                    X[u] = 0.0
                    np.maximum.at(X[u], np.asarray(seq, dtype=np.int64), ages[user])
        gram = X.T @ X
        gram[np.diag_indices_from(gram)] += self.l2
        P = np.linalg.inv(gram)
        B = P / (-np.diag(P))[None, :]
        np.fill_diagonal(B, 0.0)
        self.weights, self.n_items = B, n_items
        return self

    def score(self, users: Sequence[str], histories: Sequence[Sequence[int]]) -> np.ndarray:
        _require_fitted(self, "weights")
        return _padding_to_minus_inf(recency_matrix(histories, self.n_items, self.input_decay) @ self.weights)


class SequentialLinear:
    """SLIT (Choi et al., 2021): a closed-form linear map from a user's recent items to their next item.

    Every train position ``t`` gives one regression row: the source is the ``window``
    items before it, weighted ``source_decay ** (lag - 1)``, the target is the item at
    ``t``. ``B = (S^T S + l2 I)^-1 S^T T``. A user is scored from their last ``window``
    items weighted ``input_decay ** age`` (newest 1): what tends to come next after
    what they just watched, which EASE (unordered co-occurrence) does not model.
    """

    def __init__(
        self, l2: float = 100.0, window: int = 40, source_decay: float = 0.9, input_decay: float = 0.9
    ) -> None:
        if l2 <= 0 or window < 1:
            raise ValueError(f"SequentialLinear needs l2 > 0 and window >= 1, got {l2}, {window}")
        for name, value in (("source_decay", source_decay), ("input_decay", input_decay)):
            if not 0 < value <= 1:
                raise ValueError(f"SequentialLinear.{name} must be in (0, 1], got {value}")
        self.l2, self.window, self.source_decay, self.input_decay = l2, window, source_decay, input_decay
        self.weights: np.ndarray | None = None
        self.n_items = 0

    def fit(self, train: Mapping[str, Sequence[int]], n_items: int) -> "SequentialLinear":
        import scipy.sparse as sparse

        seqs = [np.asarray(seq, dtype=np.int64) for seq in train.values() if len(seq) >= 2]
        if not seqs:
            raise ValueError("SequentialLinear.fit: no user has 2 train interactions to learn from")
        flat = np.concatenate(seqs)
        if flat.min() < 1 or flat.max() > n_items:
            raise ValueError(f"train holds item indices outside 1..{n_items}")
        position = np.concatenate([np.arange(seq.size) for seq in seqs])  # index within the user's sequence
        rows_of = np.cumsum(position > 0) - 1  # regression row of each position t >= 1
        rows, cols, vals = [], [], []
        for lag in range(1, self.window + 1):
            at = np.nonzero(position >= lag)[0]  # positions with an item `lag` steps before them
            rows.append(rows_of[at])
            cols.append(flat[at - lag])
            vals.append(np.full(at.size, self.source_decay ** (lag - 1)))
        targets = np.nonzero(position > 0)[0]
        n_rows, width = targets.size, n_items + 1
        source = sparse.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_rows, width)
        )
        target = sparse.csr_matrix((np.ones(n_rows), (np.arange(n_rows), flat[targets])), shape=(n_rows, width))
        gram = (source.T @ source).toarray()
        gram[np.diag_indices_from(gram)] += self.l2
        self.weights = np.linalg.solve(gram, (source.T @ target).toarray())
        self.n_items = n_items
        return self

    def score(self, users: Sequence[str], histories: Sequence[Sequence[int]]) -> np.ndarray:
        _require_fitted(self, "weights")
        recent = [list(h)[-self.window :] for h in histories]
        return _padding_to_minus_inf(recency_matrix(recent, self.n_items, self.input_decay) @ self.weights)


def standardize_rows(scores: np.ndarray) -> np.ndarray:
    """Each row shifted and scaled to mean 0, std 1 over its finite entries (-inf stays -inf)."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    counts = np.maximum(finite.sum(axis=1, keepdims=True), 1)
    values = np.where(finite, scores, 0.0)
    mean = values.sum(axis=1, keepdims=True) / counts
    std = np.sqrt((np.where(finite, scores - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / counts)
    return np.where(finite, (values - mean) / np.maximum(std, 1e-12), -np.inf)


class ScoreBlend:
    """``z(first) + weight * z(second)``: two models' per-user standardised scores, blended."""

    def __init__(self, first: Recommender, second: Recommender, weight: float) -> None:
        if weight < 0:
            raise ValueError(f"ScoreBlend.weight must be >= 0, got {weight}")
        self.first, self.second, self.weight = first, second, weight
        self.fit_seconds: tuple[float, float] = (0.0, 0.0)

    def fit(self, train: Mapping[str, Sequence[int]], n_items: int) -> "ScoreBlend":
        import time

        started = time.perf_counter()
        self.first.fit(train, n_items)
        middle = time.perf_counter()
        self.second.fit(train, n_items)
        self.fit_seconds = (middle - started, time.perf_counter() - middle)
        return self

    def score(self, users: Sequence[str], histories: Sequence[Sequence[int]]) -> np.ndarray:
        return blend_scores(self.first.score(users, histories), self.second.score(users, histories), self.weight)


class WeightedBlend:
    """``sum_k weights[k] * z(models[k])``: several models' per-user standardised scores, blended.

    ``fit`` hands each train interaction's timestamp (``times``) to the models that
    use them (``uses_times``: :class:`RecentPopularity`, a time-decayed :class:`EASE`).
    """

    def __init__(self, models: Sequence[Recommender], weights: Sequence[float]) -> None:
        if len(models) != len(weights) or not models:
            raise ValueError(
                f"WeightedBlend needs one weight per model, got {len(models)} models, {len(weights)} weights"
            )
        if any(w < 0 for w in weights):
            raise ValueError(f"WeightedBlend.weights must be >= 0, got {list(weights)}")
        self.models, self.weights = list(models), [float(w) for w in weights]
        self.uses_times = any(getattr(m, "uses_times", False) for m in self.models)
        self.fit_seconds: list[float] = [0.0] * len(self.models)

    def fit(
        self, train: Mapping[str, Sequence[int]], n_items: int, times: Mapping[str, Sequence[int]] | None = None
    ) -> "WeightedBlend":
        import time

        for k, model in enumerate(self.models):
            started = time.perf_counter()
            fit_model(model, train, n_items, times)
            self.fit_seconds[k] = time.perf_counter() - started
        return self

    def score(self, users: Sequence[str], histories: Sequence[Sequence[int]]) -> np.ndarray:
        return blend_many([m.score(users, histories) for m in self.models], self.weights)


def fit_model(
    model: Recommender, train: Mapping[str, Sequence[int]], n_items: int,
    times: Mapping[str, Sequence[int]] | None = None,
) -> Recommender:
    """``model.fit(train, n_items)``, passing ``times`` to a model that uses timestamps (``uses_times``)."""
    if getattr(model, "uses_times", False):
        return model.fit(train, n_items, times=times)
    return model.fit(train, n_items)


def blend_many(scores: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum_k weights[k] * standardize_rows(scores[k])``; -inf in any input (e.g. padding) stays -inf."""
    total, finite = None, None
    for part, weight in zip(scores, weights):
        z = standardize_rows(part)
        ok = np.isfinite(z)
        term = weight * np.where(ok, z, 0.0)
        total = term if total is None else total + term
        finite = ok if finite is None else finite & ok
    if total is None:
        raise ValueError("blend_many needs at least one score matrix")
    blended = np.where(finite, total, -np.inf)
    blended[:, 0] = -np.inf
    return blended


def blend_scores(first: np.ndarray, second: np.ndarray, weight: float) -> np.ndarray:
    """``standardize_rows(first) + weight * standardize_rows(second)``; padding stays -inf."""
    a, b = standardize_rows(first), standardize_rows(second)
    # -inf in either (padding, or an item a model rules out) stays -inf; avoids 0 * -inf = nan.
    finite = np.isfinite(a) & np.isfinite(b)
    blended = np.where(finite, a + weight * np.where(finite, b, 0.0), -np.inf)
    blended[:, 0] = -np.inf
    return blended
