"""BPR-MF: matrix factorisation trained with the BPR pairwise loss (Rendle et al., 2009), a baseline.

The one baseline that trains with torch (imported inside :meth:`BPRMF.fit`), so it sits apart from the
numpy baselines of :mod:`aisys.models.baselines`, whose interface (``fit``/``score``) it follows.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from aisys.models.baselines import _padding_to_minus_inf, _require_fitted, interaction_matrix


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
