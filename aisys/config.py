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
        for key, value in values.items():
            object.__setattr__(self, key, value)  # bypass validate_assignment: no recursion
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


class ModelConfig(_Section):
    kind: Literal["sasrec"] = "sasrec"
    embedding_dim: int = Field(64, ge=4)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)

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
    default_k: int = Field(10, ge=1)
    max_k: int = Field(100, ge=1)
    model_uri: str | None = Field(None, description="Override the registry alias (models:/name/version).")
    access_log: bool = Field(True, description="Serve's per-request access log lines.")

    @model_validator(mode="after")
    def _k_bounds(self) -> "ServeConfig":
        if self.default_k > self.max_k:
            raise ValueError(f"serve.default_k ({self.default_k}) must not exceed serve.max_k ({self.max_k})")
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
    cache_ttl_s: float = Field(30.0, ge=0, description="Recommendation response cache TTL (0 disables).")
    cache_max_entries: int = Field(100_000, ge=1)
    max_body_bytes: int = Field(64 * 1024, ge=1, description="Larger request bodies get 413.")
    cors_origins: list[str] = Field(default_factory=list, description="Allowed browser origins (none by default).")


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


class TuneConfig(_Section):
    """A Ray Tune ASHA sweep over the sequential model (owned by ``aisys.tuning``)."""

    num_samples: int = Field(8, ge=1, description="Trials in the sweep.")
    max_concurrent: int = Field(2, ge=1)
    max_epochs: int = Field(30, ge=1, description="Epoch budget per trial (ASHA's max_t).")
    grace_period: int = Field(3, ge=1, description="Epochs before ASHA may stop a trial.")
    metric: str = Field("ndcg@10", description="Validation metric the sweep maximises.")
    seed: int = 0


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


class MonitorConfig(_Section):
    """The drift monitor actor and the retrain policy (owned by ``aisys.monitoring``)."""

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
