"""One validated configuration object for every stage.

`AppConfig` is loaded from a YAML file (``configs/local.yaml`` by default), then
overridden by environment variables (``AISYS__TRAIN__EPOCHS=3``) and finally by
CLI ``--set train.epochs=3`` pairs. Every section forbids unknown keys, so a
typo is an error that names the key instead of a silently ignored setting.

Nothing here touches the disk or the environment at import time: call
:func:`load_config`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ENV_PREFIX = "AISYS__"
DEFAULT_CONFIG_PATH = Path("configs/local.yaml")


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(_Section):
    """Where state lives: one workspace folder, and each store a path or URI that defaults under it.

    Relative local paths are made absolute when the config is loaded, because
    Ray workers, Serve replicas and job drivers run with other working folders.
    """

    workspace: str = Field(".aisys", description="Local working folder; the stores below default under it.")
    lake_uri: str | None = Field(None, description="Root of the Parquet data lake (path or s3://); default <workspace>/lake.")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking/registry store; default sqlite:///<workspace>/mlflow.db."
    )
    mlflow_artifact_uri: str | None = Field(
        None, description="Artifact root for new MLflow experiments (path or s3://); default <workspace>/mlartifacts."
    )
    cache_dir: str | None = Field(None, description="Download cache (MovieLens wheel); default <workspace>/cache.")
    s3_endpoint_url: str | None = Field(
        None,
        description=(
            "S3-compatible endpoint for s3:// stores (MinIO, Ceph, moto: 'http://host:9000'); None = AWS. "
            "pyarrow ignores AWS_ENDPOINT_URL, so the lake needs it here; MLflow gets it as MLFLOW_S3_ENDPOINT_URL."
        ),
    )
    s3_region: str | None = Field(None, description="Region of the s3:// bucket(s); None = the AWS SDK's default chain.")
    collector_uri: str | None = Field(
        None,
        description=(
            "Where the HTTP collector puts accepted events. None = daily JSONL files in <workspace>/collector "
            "(one machine: fastest); a path or s3:// URI (e.g. <lake_uri>/collector) = immutable batch objects "
            "written before the 202, readable from every node (a cluster)."
        ),
    )

    @model_validator(mode="after")
    def _derive_and_absolutise(self) -> "PathsConfig":
        ws = _absolute(self.workspace)
        values = {
            "workspace": ws,
            "lake_uri": _absolute(self.lake_uri or f"{ws}/lake"),
            "mlflow_tracking_uri": _absolute_sqlite(self.mlflow_tracking_uri or f"sqlite:///{ws}/mlflow.db"),
            "mlflow_artifact_uri": _absolute(self.mlflow_artifact_uri or f"{ws}/mlartifacts"),
            "cache_dir": _absolute(self.cache_dir or f"{ws}/cache"),
        }
        if self.collector_uri:
            values["collector_uri"] = _absolute(self.collector_uri.rstrip("/"))
        for key, value in values.items():
            object.__setattr__(self, key, value)  # bypass validate_assignment: no recursion
        if self.s3_endpoint_url is not None:
            # pyarrow needs the scheme and host:port apart (endpoint_override + scheme): no path allowed.
            from urllib.parse import urlsplit

            parts = urlsplit(self.s3_endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
                raise ValueError(
                    "paths.s3_endpoint_url must look like http://host:port or https://host (no path); "
                    f"got {self.s3_endpoint_url!r}"
                )
        return self


def _absolute(value: str) -> str:
    """Absolute path for a local path; URIs (``s3://``, ``file://``) unchanged."""
    if "://" in value:
        return value
    return str(Path(value).expanduser().absolute())


def _absolute_sqlite(uri: str) -> str:
    """Make the file of a relative ``sqlite:///rel/path.db`` URI absolute; other URIs unchanged."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + _absolute(uri[len(prefix) :])
    return uri


class RayConfig(_Section):
    """How to reach Ray. ``address=None`` starts a bounded local Ray."""

    address: str | None = Field(None, description="Ray address ('auto' on a cluster); None starts a local Ray.")
    num_cpus: int = Field(2, ge=1, description="CPUs for a local Ray.")
    num_gpus: int = Field(0, ge=0, description="GPUs for a local Ray.")
    object_store_memory_mb: int = Field(768, ge=78, description="Object store size for a local Ray.")
    include_dashboard: bool = Field(False, description="Start the Ray dashboard with a local Ray.")


class SimulatorConfig(_Section):
    """The seeded shop simulator. The drift knobs default to no drift."""

    seed: int = 7
    n_users: int = Field(500, ge=1)
    n_items: int = Field(300, ge=1)
    n_categories: int = Field(12, ge=1)
    n_sessions: int = Field(4000, ge=1, description="Shopping sessions to simulate.")
    popularity_exponent: float = Field(1.1, gt=0, description="Zipf exponent of item popularity.")
    taste_strength: float = Field(4.0, ge=0, description="How strongly users prefer their favourite categories.")
    max_session_length: int = Field(12, ge=1)
    start: str = Field("2026-01-01T00:00:00Z", description="Timestamp of the first session (ISO 8601).")
    days: int = Field(30, ge=1, description="Days the sessions are spread over.")
    # Drift knobs, applied to the second half of the simulated period when set.
    taste_shift: float = Field(0.0, ge=0, le=1, description="Share of users whose favourite categories change.")
    new_items: int = Field(0, ge=0, description="Items launched half-way through the period.")
    price_change: float = Field(0.0, description="Relative price change applied half-way (0.1 = +10%).")


class MovieLensConfig(_Section):
    """MovieLens-100K, read from the cache or from the ``recbole`` wheel."""

    path: str | None = Field(None, description="Folder with u.data/u.item/u.user or ml-100k.inter; None = cache.")
    recbole_version: str | None = Field(None, description="Pin the recbole wheel fetched for the data.")


class DataConfig(_Section):
    source: Literal["simulator", "movielens"] = "simulator"
    simulator: SimulatorConfig = SimulatorConfig()
    movielens: MovieLensConfig = MovieLensConfig()
    raw_dir: str | None = Field(None, description="Where `aisys data` writes raw event files; default <workspace>/raw.")
    raw_format: Literal["jsonl", "csv", "parquet"] = "jsonl"


class IngestConfig(_Section):
    min_timestamp: str = Field("1990-01-01T00:00:00Z", description="Older events are quarantined.")
    max_future_seconds: int = Field(86400, ge=0, description="Events this far past 'now' are quarantined.")
    max_id_length: int = Field(128, ge=1, description="Longer ids are quarantined.")


class FeaturesConfig(_Section):
    max_seq_len: int = Field(50, ge=1, description="Recent items per user that the model sees.")
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {"view": 1.0, "add_to_cart": 2.0, "purchase": 3.0, "rating": 1.0},
        description="Popularity weight of each event type.",
    )


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


class RegistryConfig(_Section):
    model_name: str = "aisys-recommender"
    champion_alias: str = "champion"


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = "/"
    num_replicas: int = Field(1, ge=1)
    max_ongoing_requests: int = Field(64, ge=1)
    max_queued_requests: int = Field(
        -1, ge=-1,
        description="Requests a caller may queue for a busy deployment before Serve answers 503 at once "
        "(-1: unbounded, Serve's default). Bound it where an overload should shed load rather than queue: "
        "the soak measured an unbounded queue turning a short overload into 30 s client timeouts.",
    )
    default_k: int = Field(10, ge=1)
    max_k: int = Field(100, ge=1)
    model_uri: str | None = Field(None, description="Override the registry alias (models:/name/version).")
    access_log: bool = Field(True, description="Serve's per-request access log lines.")
    mlflow_ui_url: str | None = Field(None, description="Link to the MLflow UI shown in the operator view.")
    ray_dashboard_url: str | None = Field(None, description="Link to the Ray dashboard shown in the operator view.")
    grafana_url: str | None = Field(None, description="Link to Grafana (serving dashboards) shown in the operator view.")
    autoscaling: bool = Field(False, description="Autoscale replicas (min/max_replicas) instead of num_replicas.")
    min_replicas: int = Field(1, ge=0, description="Autoscaling: fewest replicas.")
    max_replicas: int = Field(2, ge=1, description="Autoscaling: most replicas.")
    target_ongoing_requests: float = Field(16.0, gt=0, description="Autoscaling: ongoing requests per replica to aim for.")
    # Deployment options `aisys serve` and the generated Serve YAMLs share (aisys.serving.serve_yaml).
    upscale_delay_s: float = Field(30.0, ge=0, description="Autoscaling: load stays high this long before a replica is added.")
    downscale_delay_s: float = Field(
        600.0, ge=0, description="Autoscaling: load stays low this long before a replica goes (a model reload is not free)."
    )
    downscaling_factor: float | None = Field(
        None, gt=0, le=1, description="Autoscaling: multiplier on each scale-down step (<1: gently); None = Serve's 1."
    )
    replica_cpus: float = Field(1.0, gt=0, description="CPUs each replica reserves: one torch thread (train.torch_threads).")
    replica_memory_mb: int | None = Field(None, ge=1, description="Memory each replica reserves when scheduled; None: none.")
    max_batch_size: int = Field(32, ge=1, description="Requests scored in one forward pass (@serve.batch; user_config).")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="How long a batch waits to fill (user_config).")
    require_recorded_promotion: bool = Field(
        True,
        description="Serve a champion only if it is the last version of the registered-model tag "
        "aisys.champion_history, which every champion change aisys makes writes first (the gate's promotions, "
        "`aisys rollback`, registering with alias=champion): an alias moved by hand in MLflow is refused (a "
        "starting replica fails; a running one keeps its model, logs it and counts "
        "aisys_champion_refused_total). Turn off only for a registry whose champions are moved by other tools.",
    )
    ingress: Literal["proxy", "direct", "haproxy"] = Field(
        "haproxy",
        description="HTTP ingress of a Ray that init_ray starts: 'haproxy' (the default: Ray's bundled HAProxy on "
        "serve.port in front of the replicas' own ports; it retries idempotent requests on another replica when one "
        "dies, and was the fastest safe choice measured, docs/serving.md Benchmarks), 'proxy' (Serve's Python proxy), "
        "'direct' (replicas listen on ports of their own; serve.port still goes through the proxy). On a cluster this "
        "is the `ray start` environment instead (docs/serving.md).",
    )

    @model_validator(mode="after")
    def _k_bounds(self) -> "ServeConfig":
        if self.default_k > self.max_k:
            raise ValueError(f"serve.default_k ({self.default_k}) must not exceed serve.max_k ({self.max_k})")
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"serve.min_replicas ({self.min_replicas}) must not exceed serve.max_replicas ({self.max_replicas})"
            )
        return self


class GatewayConfig(_Section):
    """The API gateway inside the FastAPI ingress: keys and scopes, rate limits, cache, body limits, CORS.

    Owned by ``aisys.gateway``; see docs/gateway.md.
    """

    auth: bool = Field(True, description="Require an API key on every route except /healthz.")
    keys_file: str | None = Field(
        None, description="JSON file of hashed API keys and their scopes; default <workspace>/api-keys.json."
    )
    rate_limit_per_s: float = Field(50.0, gt=0, description="Token refill rate per key (requests/second).")
    rate_limit_burst: int = Field(100, ge=1, description="Token bucket size per key.")
    storefront_rate_limit_per_s: float = Field(5.0, gt=0, description="Refill rate for storefront-scope keys.")
    storefront_rate_limit_burst: int = Field(20, ge=1, description="Bucket size for storefront-scope keys.")
    rate_limit_backend: Literal["actor", "memory"] = Field(
        "actor", description="'actor': one named Ray actor shared by every replica; 'memory': per process."
    )
    rate_limit_actor_name: str = Field("aisys-rate-limiter", min_length=1, description="Name of the shared limiter actor.")
    rate_limit_namespace: str = Field("aisys", min_length=1, description="Ray namespace of the shared limiter actor.")
    rate_limit_timeout_s: float = Field(1.0, gt=0, description="Longest wait for the limiter actor per request.")
    rate_limit_fail_open: bool = Field(
        True, description="Serve requests (true) or answer 503 (false) while the limiter actor is unreachable."
    )
    rate_limit_lease_max_tokens: int = Field(
        64, ge=1,
        description="Tokens a replica leases at once from the shared limiter actor and spends without a round trip "
        "(at most 1/8 of a key's burst; 1: ask the actor on every request). See docs/serving.md, Request path.",
    )
    rate_limit_lease_ttl_s: float = Field(
        1.0, gt=0, description="Leased tokens not spent within this long are dropped (never returned, never saved)."
    )
    keys_reload_s: float = Field(1.0, ge=0, description="How often a server re-checks the key file (revocations).")
    cache_ttl_s: float = Field(30.0, ge=0, description="Recommendation response cache TTL (0 disables).")
    cache_max_entries: int = Field(100_000, ge=1)
    max_body_bytes: int = Field(64 * 1024, ge=1, description="Larger request bodies get 413.")
    cors_origins: list[str] = Field(default_factory=list, description="Allowed browser origins (none by default).")
    api_docs: bool = Field(
        True,
        description="Serve FastAPI's /docs, /redoc and /openapi.json (open pages): on for local development, "
        "off on a cluster (serve_configs/cluster.yaml), where they are not mounted (404).",
    )
    session_secret_file: str | None = Field(
        None,
        description="File of the HMAC secret that signs shopper session tokens (0600, created on first use); "
        "default: 'session-secret' beside keys_file. Never an API key; deleting it ends every session.",
    )
    shopper_session_ttl_s: float = Field(
        3600.0, gt=0, le=30 * 86400, description="Lifetime of a shopper session token (seconds)."
    )
    session_revocations_file: str | None = Field(
        None,
        description="JSON list of shopper sessions revoked before they expire (`aisys sessions revoke`, "
        "DELETE /admin/sessions/{sid}), re-read every keys_reload_s; each entry is dropped once no token of its "
        "session can be alive (shopper_session_ttl_s). Default: 'session-revocations.json' beside keys_file.",
    )
    shopper_rate_limit_per_s: float = Field(5.0, gt=0, description="Refill rate of each shopper session's bucket.")
    shopper_rate_limit_burst: int = Field(20, ge=1, description="Bucket size of each shopper session.")
    address_rate_limit_per_s: float = Field(
        20.0, gt=0,
        description="Refill rate of each client address's bucket, taken by every shopper request from that address "
        "(all its sessions together; a shop behind one NAT shares it, so keep it well above one shopper's).",
    )
    address_rate_limit_burst: int = Field(60, ge=1, description="Bucket size of each client address.")
    session_mint_rate_per_s: float = Field(
        0.2, gt=0, description="Refill rate of POST /shop/session per client address (new anonymous sessions)."
    )
    session_mint_burst: int = Field(10, ge=1, description="Bucket size of POST /shop/session per client address.")
    client_address_header: str | None = Field(
        None,
        description="Header holding the caller's address when a trusted load balancer sits in front "
        "(e.g. 'X-Forwarded-For': its LAST entry is used, the one the balancer appended). Unset: the TCP peer. "
        "Set it only behind such a balancer: otherwise a client could claim any address.",
    )

    @model_validator(mode="after")
    def _origins_are_origins(self) -> "GatewayConfig":
        # CORS is restricted: exact origins only; '*' would let any site call the API.
        for origin in self.cors_origins:
            scheme, sep, rest = origin.partition("://")
            if origin == "*" or not sep or scheme not in ("http", "https") or not rest or "/" in rest:
                raise ValueError(
                    f"gateway.cors_origins entry {origin!r} must be an exact origin such as "
                    "'https://shop.example.com' or 'http://localhost:3000' (no '*', no path)"
                )
        return self


class OnlineConfig(_Section):
    """Live session features, business rules, fallback budget and canary (owned by ``aisys.serving``)."""

    session_store: Literal["actor", "memory"] = Field(
        "actor", description="'actor': one named Ray actor shared by every replica; 'memory': per process."
    )
    exclude: Literal["purchased", "seen"] = Field(
        "purchased", description="Items never recommended again to a user: purchased ones, or everything seen."
    )
    latency_budget_ms: float = Field(
        100.0, gt=0, description="A model call slower than this is answered by the popularity fallback."
    )
    follow_alias_every_s: float = Field(
        10.0, ge=0, description="How often replicas check the registry alias for a new model (0: never)."
    )
    canary_share: float = Field(0.0, ge=0, le=1, description="Share of users served by the challenger.")
    challenger_alias: str = "challenger"
    max_history: int = Field(
        200, ge=1, description="Recent items kept per user in the session store (the model sees the last max_seq_len)."
    )
    max_sessions: int = Field(
        200_000, ge=1,
        description="Users kept in the session store; beyond it the least recently used user's session is evicted "
        "(their next request falls back to the snapshot-free cold start). Bounds the store's memory.",
    )
    session_sync_every_s: float = Field(
        0.1, ge=0,
        description="With the shared session actor, each replica reads sessions from a local copy and asks the actor "
        "for the sessions changed since its last sync this often: an event posted to one replica is seen on another "
        "at most this long (plus one actor call) later, and at once on the same replica. 0: no copy, every read asks "
        "the actor (docs/serving.md, Session store).",
    )
    stock_file: str | None = Field(
        None, description="JSON file of out-of-stock items shared by replicas; default <workspace>/online/stock.json."
    )
    stock_backend: Literal["file", "actor"] = Field(
        "file",
        description=(
            "How replicas share stock: 'file' = online.stock_file on this host's disk (one machine); 'actor' = one "
            "named Ray actor on the head node, kept in <lake_uri>/online/stock.json (a cluster)."
        ),
    )
    retrieval: Literal["exact", "ivf_flat"] = Field(
        "ivf_flat",
        description=(
            "Top-k over the catalogue: 'exact' scores every item; 'ivf_flat' answers through a Faiss IVF-Flat "
            "index over the item embeddings once the catalogue has retrieval_min_items items (docs/retrieval.md)."
        ),
    )
    retrieval_min_items: int = Field(
        100_000, ge=1, description="Smallest catalogue served through the ANN index; smaller ones are scored exactly."
    )
    nprobe: int = Field(
        64, ge=1, description="IVF lists scanned per query (recall 0.995 at 1M items, ~1 ms; docs/retrieval.md)."
    )


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


class GateConfig(_Section):
    """The promotion gate: a candidate beats the champion by a margin and passes the guardrails."""

    metric: str = Field("ndcg@10", description="Primary metric compared on the same holdout.")
    min_improvement: float = Field(0.0, description="Relative margin over the champion (0.01 = +1%).")
    min_coverage: float = Field(0.05, ge=0, le=1, description="Lowest catalogue coverage@10 allowed.")
    max_popularity_ratio: float = Field(
        1.5, gt=0, description="Highest mean popularity of recommendations, relative to the champion's."
    )
    segment_tolerance: float = Field(
        0.10, ge=0, description="No segment may be worse than the champion's by more than this (relative)."
    )
    min_segment_users: int = Field(20, ge=1, description="Segments smaller than this are not judged.")
    segment_alpha: float = Field(
        0.05, ge=0, lt=1,
        description="A segment below its floor fails only if the shortfall is significant (one-sided paired test "
        "over its users, p < segment_alpha); 0 fails any point estimate below the floor.",
    )


class MonitorConfig(_Section):
    """The drift monitor actor and the retrain policy (owned by ``aisys.monitoring``)."""

    enabled: bool = Field(
        True, description="Serving replicas forward live events and served lists to the monitor actor."
    )
    window_events: int = Field(5000, ge=10, description="Sliding window of live events compared to the reference.")
    check_every_events: int = Field(500, ge=1, description="Fast drift statistics every N events.")
    report_every_s: float = Field(3600.0, gt=0, description="Evidently report at least this often.")
    psi_threshold: float = Field(0.2, gt=0, description="PSI above this counts as drift.")
    drift_consecutive_checks: int = Field(3, ge=1, description="Checks in a row above threshold to trigger.")
    hit_rate_horizon_events: int = Field(5, ge=1, description="A list is a hit if the user interacts with it within N events.")
    hit_rate_drop: float = Field(0.2, ge=0, le=1, description="Relative online hit-rate drop that triggers.")
    min_new_events: int = Field(50_000, ge=1, description="New lake events that trigger a retrain by themselves.")
    cooldown_s: float = Field(6 * 3600.0, ge=0, description="Least time between two retrains.")
    max_retrains_per_day: int = Field(4, ge=0)
    train_window_days: int | None = Field(None, ge=1, description="Train on the last N days of the snapshot (None: all).")
    profile_bins: int = Field(10, ge=2, description="Quantile bins per numeric feature in the reference profile.")
    report_on_drift: bool = Field(True, description="Write an Evidently report when a check first sees drift.")
    hit_rate_min_lists: int = Field(
        200, ge=1, description="Judged lists a model version needs before its hit-rate baseline is set and compared."
    )
    hit_rate_window_lists: int = Field(1000, ge=1, description="Recent judged lists the online hit-rate is taken over.")
    hit_rate_drop_alpha: float = Field(
        0.05, ge=0, lt=1,
        description="The hit-rate drop must also be significant: one-sided two-proportion z-test p-value below "
        "this (0 disables the test). Small windows swing by chance; this keeps them from triggering.",
    )


class DemoConfig(_Section):
    n_events: int = Field(300, ge=0, description="Live events the demo posts over HTTP.")
    n_requests: int = Field(300, ge=1, description="Recommendation requests the demo sends after the live replay (every fifth for an unknown visitor).")
    bad_row_share: float = Field(0.02, ge=0, lt=1, description="Share of deliberately broken raw rows.")
    duplicate_share: float = Field(0.02, ge=0, lt=1, description="Share of duplicated raw rows.")


class AppConfig(_Section):
    """The whole system's configuration; every stage receives this object."""

    paths: PathsConfig = PathsConfig()
    ray: RayConfig = RayConfig()
    data: DataConfig = DataConfig()
    ingest: IngestConfig = IngestConfig()
    features: FeaturesConfig = FeaturesConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    registry: RegistryConfig = RegistryConfig()
    serve: ServeConfig = ServeConfig()
    gateway: GatewayConfig = GatewayConfig()
    online: OnlineConfig = OnlineConfig()
    tune: TuneConfig = TuneConfig()
    gate: GateConfig = GateConfig()
    monitor: MonitorConfig = MonitorConfig()
    demo: DemoConfig = DemoConfig()

    @model_validator(mode="after")
    def _raw_dir_under_workspace(self) -> "AppConfig":
        raw = self.data.raw_dir or f"{self.paths.workspace}/raw"
        object.__setattr__(self.data, "raw_dir", _absolute(raw))
        return self


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{key}'")
        else:
            lines.append(f"  - {key}: {item['msg']}")
    return "\n".join(lines)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = [p for p in dotted.split(".") if p]
    if not parts:
        raise ConfigError(f"empty override key in {dotted!r}")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _parse_scalar(text: str) -> Any:
    """Parse an override value the way YAML would (``3`` -> int, ``true`` -> bool)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Collect ``AISYS__SECTION__KEY=value`` variables into a nested dict."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            _set_dotted(tree, dotted, _parse_scalar(raw))
    return tree


def cli_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """Turn ``["train.epochs=3", ...]`` into a nested dict."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like section.key=value")
        key, raw = pair.split("=", 1)
        _set_dotted(tree, key.strip(), _parse_scalar(raw))
    return tree


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``extra``, merging nested dicts key by key."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_from_dict(data: Mapping[str, Any], origin: str = "<dict>") -> AppConfig:
    """Validate a plain mapping into an :class:`AppConfig`, with errors that name each bad key."""
    try:
        return AppConfig.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> AppConfig:
    """Load YAML, then environment overrides, then CLI overrides; validate once.

    ``path=None`` uses ``configs/local.yaml`` when it exists and the embedded
    defaults otherwise.
    """
    data: dict[str, Any] = {}
    origin = "embedded defaults"
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded
        origin = str(path)
    data = deep_merge(data, env_overrides(os.environ if environ is None else environ))
    data = deep_merge(data, cli_overrides(overrides))
    return config_from_dict(data, origin)
