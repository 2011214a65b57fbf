"""The evaluation runner's models and settings: names, the valid grids, the ML-100K presets, model factories.

What :mod:`aisys.evaluation.runner` tunes and fits (see its docstring). Pure: no fitting happens here.
"""

from __future__ import annotations

from typing import Any

from aisys.config import AppConfig
from aisys.evaluation.sequential import SequentialSettings
from aisys.models.baselines import EASE, ItemKNN, MostPopular, RecentPopularity, Recommender, SequentialLinear
from aisys.models.bprmf import BPRMF

MODEL_NAMES = (
    "sasrec", "pop", "itemknn", "ease", "bpr", "recentpop", "ease-recency", "slit", "sasrec+ease",
    "sasrec+ease+slit+recentpop", "sasrec+ctx-blend", "sasrec+ctx-blend+title",
)
SEQUENTIAL_MODELS = (
    "sasrec", "sasrec+ease", "sasrec+ease+slit+recentpop", "sasrec+ctx-blend", "sasrec+ctx-blend+title",
)
# The models that take each request's gap since the user's last interaction.
CONTEXT_MODELS = ("sasrec+ctx-blend", "sasrec+ctx-blend+title")
BLEND_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
# The recency, context and title blends' grids (sasrec+ease+slit+recentpop, sasrec+ctx-blend, +title) are the
# multi-stage model's: RECENCY_BLEND_WEIGHTS (EASE, SLIT, recent popularity relative to SASRec's 1),
# SASREC_BLEND_WEIGHTS, CONTEXT_GAP_THRESHOLDS ("came back" after 1 h / 1 d / 1 w), CONTEXT_SASREC_WEIGHTS,
# CONTEXT_MIN_GAIN (a bucket or the title is kept only if it gains this much valid NDCG@10), TITLE_WINDOW,
# TITLE_DECAY and TITLE_WEIGHTS live in aisys/models/blend_tuning.py (imported by aisys/evaluation/blends.py).
SPLITS = ("loo", "temporal")
SELECT_METRIC = "ndcg@10"
# The SASRec settings chosen on ML-100K validation (docs/evaluation.md); `aisys evaluate`
# and the benchmark apply them beneath the user's own --set overrides.
ML100K_PRESET: tuple[str, ...] = (
    "features.max_seq_len=200",
    "model.dropout=0.2",
    "train.epochs=30",
    "train.eval_every=3",
    "train.batch_size=64",
    "train.lr=0.002",
)
# Per split, on top: the temporal targets are every later item, so predicting 20 steps ahead helped on valid.
ML100K_SPLIT_PRESET: dict[str, tuple[str, ...]] = {
    "loo": (),
    # 12 epochs: valid peaked at 9 (0.131; 0.135 at 24 of 30), and SASRec gets ~0.1 of the blend's weight here.
    "temporal": ("train.loss_horizon=20", "train.loss_horizon_weight=1.0", "train.epochs=12"),
}
EXPORT_DEPTH = 100
K = 10

# Settings grids tuned on valid (kept small: every point is a fit on 2 cores).
BASELINE_GRIDS: dict[str, list[dict[str, Any]]] = {
    "pop": [{}],
    "itemknn": [{"neighbors": n, "shrink": s} for n in (50, 200) for s in (0.0, 50.0)],
    "ease": [{"l2": l2} for l2 in (30.0, 100.0, 300.0, 1000.0)],
    "bpr": [{"dim": 64, "epochs": e, "l2": l2} for e in (20, 50) for l2 in (1e-5, 1e-3)],
    # Recency: popularity decayed by age (what is popular now), and EASE that weighs a
    # user's recent items more (input_decay) and recent co-occurrences more (half_life_days).
    "recentpop": [{"half_life_days": h} for h in (1.0, 3.0, 7.0, 14.0, 30.0, 60.0)],
    "slit": [{"l2": l2} for l2 in (30.0, 100.0, 300.0)],
    "ease-recency": [
        {"l2": l2, "input_decay": d, "half_life_days": h}
        for l2 in (100.0, 300.0, 1000.0) for d in (1.0, 0.9, 0.8) for h in (None, 60.0)
    ],
}




def ml100k_config(path: str | None, overrides: list[str] | tuple[str, ...], split: str) -> AppConfig:
    """The config for ``split`` on ML-100K: the presets above, then ``overrides`` (which win)."""
    from aisys.config import load_config

    if split not in ML100K_SPLIT_PRESET:
        raise ValueError(f"split must be one of {sorted(ML100K_SPLIT_PRESET)}, got {split!r}")
    return load_config(path, [*ML100K_PRESET, *ML100K_SPLIT_PRESET[split], *overrides])


def sequential_settings(cfg: AppConfig, seed: int) -> SequentialSettings:
    """SASRec settings from the config (``features.max_seq_len``, ``model.*``, ``train.*``)."""
    return SequentialSettings(
        max_seq_len=cfg.features.max_seq_len, embedding_dim=cfg.model.embedding_dim, n_layers=cfg.model.n_layers,
        n_heads=cfg.model.n_heads, dropout=cfg.model.dropout, epochs=cfg.train.epochs,
        batch_size=cfg.train.batch_size, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, seed=seed,
        threads=cfg.train.torch_threads, eval_every=cfg.train.eval_every,
        bucket_by_length=cfg.train.bucket_by_length, horizon=cfg.train.loss_horizon,
        horizon_weight=cfg.train.loss_horizon_weight,
    )


def make_baseline(name: str, settings: dict[str, Any], seed: int, threads: int = 1) -> Recommender:
    """A fresh, unfitted baseline ``name`` with ``settings``."""
    if name == "pop":
        return MostPopular()
    if name == "itemknn":
        return ItemKNN(**settings)
    if name == "ease":
        return EASE(**settings)
    if name == "bpr":
        return BPRMF(**settings, seed=seed, threads=threads)
    if name == "recentpop":
        return RecentPopularity(**settings)
    if name == "ease-recency":
        return EASE(**settings)
    if name == "slit":
        return SequentialLinear(**settings)
    raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")

