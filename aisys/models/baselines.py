"""Non-sequential baselines behind one small interface (numpy / torch, no Ray).

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
- :class:`BPRMF`: matrix factorisation trained with the BPR pairwise loss
  (one uniform negative per positive) in torch.
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


class EASE:
    """Embarrassingly shallow autoencoder (closed form, L2 strength ``l2``)."""

    def __init__(self, l2: float = 500.0) -> None:
        if l2 <= 0:
            raise ValueError(f"EASE.l2 must be > 0, got {l2}")
        self.l2 = l2
        self.weights: np.ndarray | None = None
        self.n_items = 0

    def fit(self, train: Mapping[str, Sequence[int]], n_items: int) -> "EASE":
        X = interaction_matrix(list(train.values()), n_items).astype(np.float64)
        gram = X.T @ X
        gram[np.diag_indices_from(gram)] += self.l2
        P = np.linalg.inv(gram)
        B = P / (-np.diag(P))[None, :]
        np.fill_diagonal(B, 0.0)
        self.weights, self.n_items = B, n_items
        return self

    def score(self, users: Sequence[str], histories: Sequence[Sequence[int]]) -> np.ndarray:
        _require_fitted(self, "weights")
        return _padding_to_minus_inf(interaction_matrix(histories, self.n_items) @ self.weights)


class BPRMF:
    """Matrix factorisation trained with BPR (Rendle et al., 2009), Adam, in-batch uniform negatives."""

    def __init__(
        self, dim: int = 64, epochs: int = 30, lr: float = 5e-3, l2: float = 1e-5, batch_size: int = 1024,
        seed: int = 0, threads: int = 1,
    ) -> None:
        if dim < 1 or epochs < 1 or batch_size < 1:
            raise ValueError(f"BPRMF dim, epochs and batch_size must be >= 1, got {dim}, {epochs}, {batch_size}")
        self.dim, self.epochs, self.lr, self.l2 = dim, epochs, lr, l2
        self.batch_size, self.seed, self.threads = batch_size, seed, threads
        self.user_index: dict[str, int] = {}
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None

    def fit(self, train: Mapping[str, Sequence[int]], n_items: int) -> "BPRMF":
        import torch

        torch.set_num_threads(self.threads)
        gen = torch.Generator().manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.user_index = {u: i for i, u in enumerate(train)}
        pairs = np.array([(self.user_index[u], i) for u, seq in train.items() for i in set(seq)], dtype=np.int64)
        if pairs.size == 0:
            raise ValueError("BPRMF.fit: train holds no interaction")
        known = interaction_matrix(list(train.values()), n_items).astype(bool)
        users = torch.nn.Embedding(len(train), self.dim)
        items = torch.nn.Embedding(n_items + 1, self.dim)
        torch.nn.init.normal_(users.weight, std=0.1, generator=gen)
        torch.nn.init.normal_(items.weight, std=0.1, generator=gen)
        optimizer = torch.optim.Adam([users.weight, items.weight], lr=self.lr)
        for _ in range(self.epochs):
            order = rng.permutation(len(pairs))
            for start in range(0, len(order), self.batch_size):
                u, pos = pairs[order[start : start + self.batch_size]].T
                neg = rng.integers(1, n_items + 1, size=u.size)
                # Resample negatives the user knows, once: a rare collision left in costs little.
                clash = known[u, neg]
                neg[clash] = rng.integers(1, n_items + 1, size=int(clash.sum()))
                tu, tp, tn = (torch.from_numpy(a) for a in (u, pos, neg))
                eu, ep, en = users(tu), items(tp), items(tn)
                margin = (eu * (ep - en)).sum(-1)
                loss = -torch.nn.functional.logsigmoid(margin).mean()
                loss = loss + self.l2 * (eu.pow(2).sum() + ep.pow(2).sum() + en.pow(2).sum()) / u.size
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        self.user_factors = users.weight.detach().numpy().astype(np.float64)
        self.item_factors = items.weight.detach().numpy().astype(np.float64)
        return self

    def score(self, users: Sequence[str], histories: Sequence[Sequence[int]]) -> np.ndarray:
        _require_fitted(self, "item_factors")
        missing = [u for u in users if u not in self.user_index]
        if missing:
            raise KeyError(f"BPRMF has no factors for user(s) {missing[:5]}: they were not in train")
        rows = np.array([self.user_index[u] for u in users], dtype=np.int64)
        return _padding_to_minus_inf(self.user_factors[rows] @ self.item_factors.T)


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


def blend_scores(first: np.ndarray, second: np.ndarray, weight: float) -> np.ndarray:
    """``standardize_rows(first) + weight * standardize_rows(second)``; padding stays -inf."""
    a, b = standardize_rows(first), standardize_rows(second)
    # -inf in either (padding, or an item a model rules out) stays -inf; avoids 0 * -inf = nan.
    finite = np.isfinite(a) & np.isfinite(b)
    blended = np.where(finite, a + weight * np.where(finite, b, 0.0), -np.inf)
    blended[:, 0] = -np.inf
    return blended
