"""Item content as a blend component: titles that share words (sequels, franchises).

ML-100K users rate in sessions, and a session often runs through a franchise
("Star Trek III", "Star Trek IV", ...; "Alien", "Alien: Resurrection"). The
co-occurrence models see that only for items rated together often enough; the
titles say it for every item. Genre and release-year affinities were screened
too and added nothing to the blend out of sample (docs/evaluation.md).

- :func:`title_tokens`: the words of a title that can name a franchise.
- :func:`title_similarity`: item-item cosine of idf-weighted title words.
- :class:`TitleSimilarity`: a :class:`~aisys.models.baselines.Recommender` that
  scores each item by its title similarity to the user's recent items.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

from aisys.models.baselines import _padding_to_minus_inf, _require_fitted, recency_matrix

# Function words (English, and the French articles of foreign titles): they name no franchise.
TITLE_STOP_WORDS = frozenset({
    "the", "a", "an", "of", "and", "in", "to", "on", "for", "with", "at", "la", "le", "les", "de",
})
_WORD = re.compile(r"[a-z0-9']+")


def title_tokens(title: str) -> frozenset[str]:
    """Lower-cased words of ``title`` longer than one character, stop words dropped."""
    return frozenset(w for w in _WORD.findall(title.lower()) if len(w) > 1 and w not in TITLE_STOP_WORDS)


def title_similarity(titles: Sequence[str]) -> np.ndarray:
    """(n, n) float64 cosine similarity of the titles' idf-weighted word sets; diagonal 0.

    Only words shared by at least two titles count (a word of one title links
    nothing); a title with none of them is similar to nothing. ``titles[0]`` is
    the padding slot of the item indices (its row and column are 0 when it is "").
    """
    tokens = [title_tokens(t) for t in titles]
    counts: dict[str, int] = {}
    for words in tokens:
        for w in words:
            counts[w] = counts.get(w, 0) + 1
    vocab = {w: j for j, w in enumerate(sorted(w for w, c in counts.items() if c >= 2))}
    n = len(titles)
    matrix = np.zeros((n, len(vocab)))
    for i, words in enumerate(tokens):
        for w in words:
            if w in vocab:
                matrix[i, vocab[w]] = np.log(n / counts[w])  # rare words (a franchise's name) weigh most
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix = matrix / np.maximum(norms, 1e-12)
    similarity = matrix @ matrix.T
    np.fill_diagonal(similarity, 0.0)
    return similarity


class TitleSimilarity:
    """Score of item ``i`` = sum over the user's last ``window`` items ``h`` of ``decay**age(h) * sim(i, h)``.

    ``titles[i]`` is the title of item index ``i`` (``titles[0]`` the padding, "");
    ``fit`` only checks that they cover the catalogue and builds the similarity
    (no training data is used: the feature is the catalogue's own).
    """

    def __init__(self, titles: Sequence[str], window: int = 20, decay: float = 0.9) -> None:
        if window < 1:
            raise ValueError(f"TitleSimilarity.window must be >= 1, got {window}")
        if not 0 < decay <= 1:
            raise ValueError(f"TitleSimilarity.decay must be in (0, 1], got {decay}")
        self.titles = [str(t) for t in titles]
        self.window, self.decay = window, decay
        self.similarity: np.ndarray | None = None
        self.n_items = 0

    def fit(self, train: Mapping[str, Sequence[int]], n_items: int) -> "TitleSimilarity":
        """Build the item-item title similarity (``train`` is not used)."""
        if len(self.titles) != n_items + 1:
            raise ValueError(
                f"TitleSimilarity has {len(self.titles)} titles for {n_items} items: it needs n_items + 1 "
                "(index 0 is the padding)"
            )
        self.similarity = title_similarity(self.titles)
        self.n_items = n_items
        return self

    def score(self, users: Sequence[str], histories: Sequence[Sequence[int]]) -> np.ndarray:
        """(U, n_items + 1) scores, column 0 at -inf."""
        _require_fitted(self, "similarity")
        recent = [list(h)[-self.window :] for h in histories]
        return _padding_to_minus_inf(recency_matrix(recent, self.n_items, self.decay) @ self.similarity)
