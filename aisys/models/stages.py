"""The multi-stage model's closed-form candidate generators: which ones, how to fit them, how to score.

Each generator is fit to one array (pure functions, so training maps them over Ray tasks):

- ``ease``: EASE item-item weights (:class:`~aisys.models.baselines.EASE`), (V, V);
- ``slit``: SLIT's "next item after the last ones" map (:class:`~aisys.models.baselines.SequentialLinear`), (V, V);
- ``recentpop_<h>d``: interaction counts decayed with half-life ``h`` days
  (:class:`~aisys.models.baselines.RecentPopularity`), (V,);
- ``title``: item-item similarity of title words (:func:`~aisys.models.item_features.title_similarity`), (V, V).

``V = n_items + 1`` (index 0 is padding). Arrays are float32 (half the bundle, and a float32 matrix
product per request). :func:`score_stage` turns an array and the users' histories into (B, V) scores,
padding at -inf: the same code on the validation window, in the gate's holdout and when serving.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from aisys.models.baselines import EASE, RecentPopularity, SequentialLinear
from aisys.models.item_features import title_similarity

STAGE_KINDS = ("ease", "slit", "recentpop", "title")
# SLIT scores a user from their last `window` items weighted this much less per step back (its default).
SLIT_INPUT_DECAY = 0.9


@dataclass(frozen=True)
class StageSpec:
    """One generator: its name (unique in a model), kind (one of :data:`STAGE_KINDS`) and settings."""

    name: str
    kind: str
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"unknown generator kind {self.kind!r}; known: {', '.join(STAGE_KINDS)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in the bundle)."""
        return asdict(self)


def stage_specs(stages: Any, n_items: int, has_titles: bool) -> list[StageSpec]:
    """The generators ``stages`` (a ``StagesConfig``) turns on for a catalogue of ``n_items`` items.

    The (V, V) generators are off above ``stages.max_dense_items``; ``title`` is off without titles.
    """
    dense = n_items <= stages.max_dense_items
    specs = []
    if stages.ease and dense:
        specs.append(StageSpec("ease", "ease", {
            "l2": stages.ease_l2, "input_decay": stages.ease_input_decay,
            "half_life_days": stages.ease_half_life_days,
        }))
    if stages.slit and dense:
        specs.append(StageSpec("slit", "slit", {"l2": stages.slit_l2, "window": stages.slit_window}))
    if stages.recent_popularity:
        for half_life in dict.fromkeys(stages.recent_half_lives_days):
            specs.append(StageSpec(f"recentpop_{half_life:g}d", "recentpop", {"half_life_days": half_life}))
    if stages.title and has_titles and dense:
        specs.append(StageSpec("title", "title", {"window": stages.title_window, "decay": stages.title_decay}))
    return specs


def fit_stage(
    spec: StageSpec,
    train: Mapping[str, Sequence[int]],
    times: Mapping[str, Sequence[float]],
    n_items: int,
    titles: Sequence[str] | None = None,
) -> np.ndarray:
    """Fit one generator on per-user train sequences (``times[u][j]``: seconds of ``train[u][j]``).

    Returns its float32 array (see the module docstring). ``titles`` (``titles[i]`` of item index ``i``,
    ``titles[0] == ""``) are needed by ``title`` only.
    """
    s = spec.settings
    if spec.kind == "ease":
        model = EASE(l2=s["l2"], input_decay=s["input_decay"], half_life_days=s.get("half_life_days"))
        fitted = model.fit(train, n_items, times=times) if model.uses_times else model.fit(train, n_items)
        return fitted.weights.astype(np.float32)
    if spec.kind == "slit":
        return SequentialLinear(l2=s["l2"], window=s["window"]).fit(train, n_items).weights.astype(np.float32)
    if spec.kind == "recentpop":
        return RecentPopularity(s["half_life_days"]).fit(train, n_items, times=times).counts.astype(np.float32)
    if titles is None or len(titles) != n_items + 1:
        raise ValueError(f"generator {spec.name!r} needs one title per item index (n_items + 1 = {n_items + 1})")
    return title_similarity(titles).astype(np.float32)


def recency_rows(histories: Sequence[Sequence[int]], n_items: int, decay: float):
    """Sparse (B, n_items + 1) float32 CSR: a user's newest item weighs 1, the one before ``decay``, ...

    The same values as :func:`~aisys.models.baselines.recency_matrix` (a repeated item keeps its newest
    weight), kept sparse: a history touches a few dozen of the catalogue's items, so the product with a
    (V, V) matrix costs (history length x V), not V x V (and no multi-threaded BLAS call, which on a
    busy 2-core box was measured at 50 ms against 1 ms for this).
    """
    import scipy.sparse as sparse

    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    indptr, indices, data = [0], [], []
    for row, history in enumerate(histories):
        weights: dict[int, float] = {}
        for age, item in enumerate(reversed(list(history))):
            weights.setdefault(int(item), decay**age)
        if weights and (min(weights) < 1 or max(weights) > n_items):
            raise ValueError(f"history of row {row} holds item indices outside 1..{n_items}")
        indices.extend(weights)
        data.extend(weights.values())
        indptr.append(len(indices))
    return sparse.csr_matrix(
        (np.asarray(data, np.float32), np.asarray(indices, np.int64), np.asarray(indptr, np.int64)),
        shape=(len(histories), n_items + 1),
    )


def score_stage(spec: StageSpec, array: np.ndarray, histories: Sequence[Sequence[int]]) -> np.ndarray:
    """(B, V) float32 scores of one fitted generator for users with these histories; column 0 at -inf."""
    s = spec.settings
    n_items = array.shape[-1] - 1
    if spec.kind == "recentpop":
        scores = np.tile(array, (len(histories), 1))
    else:
        if spec.kind == "ease":
            inputs = recency_rows(histories, n_items, s["input_decay"])
        elif spec.kind == "slit":
            inputs = recency_rows([list(h)[-s["window"] :] for h in histories], n_items, SLIT_INPUT_DECAY)
        else:
            inputs = recency_rows([list(h)[-s["window"] :] for h in histories], n_items, s["decay"])
        scores = np.asarray(inputs @ array, dtype=np.float32)  # sparse (B, V) x dense (V, V): one per generator
    scores[:, 0] = -np.inf
    return scores
