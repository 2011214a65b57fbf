"""The model sections: the model itself, its multi-stage blend, training and the Ray Tune search."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from aisys.config.base import _Section


class StagesConfig(_Section):
    """The multi-stage model's candidate generators and their blend (``model.kind: multistage``).

    Each generator scores every item; the blend is a weighted sum of their per-user z-scores, with one weight
    vector per "gap bucket" (seconds from the user's newest event to the request). The weights and the bucket
    threshold are tuned on the validation window at every training (docs/training.md); a generator or bucket is
    kept only if it gains ``min_gain`` valid NDCG@10. Defaults are what ML-100K leave-one-out valid chose.
    """

    ease: bool = Field(True, description="EASE (closed-form item-item autoencoder) as a generator.")
    ease_l2: float = Field(300.0, gt=0, description="EASE's L2 strength.")
    ease_input_decay: float = Field(
        1.0, gt=0, le=1, description="EASE input weight of the k-th newest history item: decay**k (1: all equal)."
    )
    ease_half_life_days: float | None = Field(
        None, gt=0, description="Weigh each train interaction 0.5**(age/half-life) in EASE's Gram matrix (None: 1)."
    )
    slit: bool = Field(True, description="SLIT (closed-form 'what comes next after the last items') as a generator.")
    slit_l2: float = Field(100.0, gt=0, description="SLIT's L2 strength.")
    slit_window: int = Field(40, ge=1, description="Last items SLIT maps to the next one.")
    recent_popularity: bool = Field(True, description="Recent popularity (counts decayed by age) as generators.")
    recent_half_lives_days: list[float] = Field(
        default_factory=lambda: [1.0, 3.0],
        description="One recent-popularity generator per half-life (days); the blend weighs each per gap bucket.",
    )
    live_popularity: bool = Field(
        True,
        description="Recent popularity as of the request: a replica adds every event it is told of after training "
        "to the recent-popularity generators' counts (the blend is tuned on the counts as trained). Off: the counts "
        "stay as trained until the next training. docs/training.md has the measurements.",
    )
    title: bool = Field(
        True, description="Title-word similarity to the user's recent items; off by itself when no titles exist."
    )
    title_window: int = Field(20, ge=1, description="Newest history items the title similarity looks at.")
    title_decay: float = Field(0.9, gt=0, le=1, description="Weight of the k-th newest item in the title similarity.")
    gap_thresholds_s: list[float] = Field(
        default_factory=lambda: [3_600.0, 86_400.0, 604_800.0],
        description="Candidate gap thresholds (seconds): users past the chosen one get their own weights.",
    )
    weight_grid: list[float] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0],
        description="Weights the coordinate search tries for each generator (SASRec's is 1 meanwhile).",
    )
    sasrec_weight_grid: list[float] = Field(
        default_factory=lambda: [1.0, 0.75, 0.5, 0.3, 0.2, 0.1], description="SASRec's own weights, tried last."
    )
    min_gain: float = Field(
        0.002, ge=0, description="Valid NDCG@10 a generator or the gap bucket must add to be kept."
    )
    max_dense_items: int = Field(
        20_000, ge=1, description="EASE, SLIT and the title similarity are (items x items) matrices: off above this."
    )
    refit_sasrec: bool = Field(
        True,
        description="After the blend and the ranking stage are chosen on valid, train SASRec again on train + valid "
        "(the valid item becomes history, as the generators' arrays already are) for the first fit's best epoch + 1 "
        "epochs, and ship that fit; nothing is chosen on it. Off: the bundle holds the fit on train only.",
    )
    validation: Literal["next_item", "time_cut", "mixed"] = Field(
        "mixed",
        description="The requests the blend, the ranking stage and SASRec's epochs are chosen on: 'next_item' "
        "(each user's second-last item from the rest), 'time_cut' (the events before the test items cut in time at "
        "80%: the users with events on both sides, every later item a target, as a deployed model's returning "
        "users) or 'mixed' (both kinds, as a deployed model answers both; the blend's gap buckets tell them apart). "
        "A time cut with fewer than time_cut_min_users returning users falls back to next_item. docs/training.md "
        "has the measurements.",
    )
    time_cut_min_users: int = Field(50, ge=2, description="Fewest returning users a time_cut or mixed validation needs.")
    ranking: Literal["auto", "blend", "lgbm"] = Field(
        "auto",
        description="The ranking stage: 'blend' (the tuned blend orders every item), 'lgbm' (a LightGBM LambdaRank "
        "ranker over the candidates' features, trained on valid), 'auto' (both scored out of fold on valid; the "
        "ranker only if it gains ranker_min_gain NDCG@10). docs/training.md has the measurements.",
    )
    ranker_depth: int = Field(50, ge=1, description="Each generator's top items whose union the ranker reorders.")
    ranker_folds: int = Field(3, ge=2, description="Folds of the valid users for ranking: auto's comparison.")
    ranker_min_gain: float = Field(
        0.002, ge=0, description="Out-of-fold valid NDCG@10 the ranker must add over the blend for ranking: auto."
    )
    ranker_min_z: float = Field(
        2.0, ge=0, description="ranking: auto also needs the ranker's gain above this many paired standard errors "
        "of the per-user NDCG@10 difference (the comparison's own noise).",
    )

    @model_validator(mode="after")
    def _valid_grids(self) -> "StagesConfig":
        if any(h <= 0 for h in self.recent_half_lives_days):
            raise ValueError(f"model.stages.recent_half_lives_days must be > 0, got {self.recent_half_lives_days}")
        if any(b <= a for a, b in zip(self.gap_thresholds_s, self.gap_thresholds_s[1:])) or any(
            t <= 0 for t in self.gap_thresholds_s
        ):
            raise ValueError(
                f"model.stages.gap_thresholds_s must be positive and increasing, got {self.gap_thresholds_s}"
            )
        if not self.weight_grid or any(w < 0 for w in self.weight_grid):
            raise ValueError(f"model.stages.weight_grid must be non-empty and >= 0, got {self.weight_grid}")
        if not self.sasrec_weight_grid or any(w <= 0 for w in self.sasrec_weight_grid):
            raise ValueError(
                f"model.stages.sasrec_weight_grid must be non-empty and > 0, got {self.sasrec_weight_grid}"
            )
        return self


class ModelConfig(_Section):
    kind: Literal["multistage", "sasrec"] = Field(
        "multistage",
        description="'multistage': SASRec plus the closed-form generators of model.stages, blended per request-time "
        "gap (what aisys train registers and serves); 'sasrec': SASRec alone (benchmarks, comparison).",
    )
    embedding_dim: int = Field(64, ge=4, description="SASRec's item embedding and hidden size.")
    n_layers: int = Field(2, ge=1, description="SASRec's transformer blocks.")
    n_heads: int = Field(2, ge=1, description="Attention heads per block (must divide embedding_dim).")
    dropout: float = Field(0.2, ge=0, lt=1, description="SASRec's dropout.")
    stages: StagesConfig = Field(default_factory=StagesConfig, description="The multi-stage generators and blend.")

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> "ModelConfig":
        if self.embedding_dim % self.n_heads:
            raise ValueError(
                f"model.embedding_dim ({self.embedding_dim}) must be divisible by model.n_heads ({self.n_heads})"
            )
        return self


class TrainConfig(_Section):
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP when > 1).")
    use_gpu: bool = Field(False, description="Train on GPUs (one per worker).")
    cpus_per_worker: float = Field(1.0, gt=0)
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 42
    torch_threads: int = Field(1, ge=1, description="torch.set_num_threads in each worker.")
    max_failures: int = Field(
        1, ge=-1, description="Ray Train FailureConfig: restarts from the latest checkpoint when a worker dies (-1: no limit)."
    )
    loss_horizon: int = Field(
        1, ge=1, description="Each position also predicts the items up to N steps ahead (1: next item only)."
    )
    loss_horizon_weight: float = Field(0.0, ge=0, description="Weight of the 2..loss_horizon-ahead cross-entropy.")
    bucket_by_length: bool = Field(
        True, description="Batch windows of similar length and trim their padding (same examples, less work)."
    )
    eval_every: int = Field(
        1, ge=1, description="Validate every N epochs (and after the last) to pick the best epoch; 3 on ML-100K."
    )
    experiment: str = Field("aisys", description="MLflow experiment name.")


class TuneConfig(_Section):
    """A Ray Tune ASHA sweep over the sequential model (owned by ``aisys.tuning``)."""

    num_samples: int = Field(8, ge=1, description="Trials in the sweep.")
    max_concurrent: int = Field(2, ge=1)
    max_epochs: int = Field(30, ge=1, description="Epoch budget per trial (ASHA's max_t).")
    grace_period: int = Field(3, ge=1, description="Epochs before ASHA may stop a trial (capped at max_epochs).")
    metric: str = Field("ndcg@10", description="Validation metric the sweep maximises.")
    seed: int = 0
    cpus_per_trial: float = Field(
        0.5, gt=0, description="Ray CPUs per trial (fractional: max_concurrent single-threaded trials share the cores)."
    )
    reduction_factor: float = Field(2.0, gt=1, description="ASHA keeps 1/reduction_factor of trials at each rung.")
    # The search space: a trial draws one value from each list (random search), dropout uniformly from
    # [min, max] and lr log-uniformly from [min, max].
    embedding_dim: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
    n_layers: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)
    n_heads: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)
    max_seq_len: list[int] = Field(default_factory=lambda: [20, 50], min_length=1)
    dropout: tuple[float, float] = Field((0.0, 0.5), description="Uniform range [min, max].")
    lr: tuple[float, float] = Field((3e-4, 1e-2), description="Log-uniform range [min, max].")

    @model_validator(mode="after")
    def _valid_space(self) -> "TuneConfig":
        bad = [(d, h) for d in self.embedding_dim for h in self.n_heads if d % h]
        if bad:
            raise ValueError(f"tune.embedding_dim values must be divisible by every tune.n_heads value; not {bad}")
        if any(v < 1 for v in self.embedding_dim + self.n_layers + self.n_heads + self.max_seq_len):
            raise ValueError("tune.embedding_dim, n_layers, n_heads and max_seq_len values must be >= 1")
        if not (0 <= self.dropout[0] <= self.dropout[1] < 1):
            raise ValueError(f"tune.dropout must be [min, max] with 0 <= min <= max < 1, got {list(self.dropout)}")
        if not (0 < self.lr[0] <= self.lr[1]):
            raise ValueError(f"tune.lr must be [min, max] with 0 < min <= max, got {list(self.lr)}")
        return self

