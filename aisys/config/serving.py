"""The request-path sections: Serve deployment, the gateway and the online (live session) settings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from aisys.config.base import _Section


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = "/"
    num_replicas: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description="Replicas of RecommenderService (without autoscaling). 'auto' (the default): one per CPU of the "
        "Ray that serves (ray.num_cpus), as `uvicorn --workers <cores>` runs a worker per core: a replica is one "
        "Python process and uses one core; but 1 while a replica keeps per-process state that replicas would not "
        "share (online.session_store or gateway.rate_limit_backend 'memory'). Each replica loads the model. "
        "docs/serving.md, Configuration.",
    )
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
    access_log: bool = Field(
        False,
        description="Per-request access log lines (Serve's and the gateway's JSON line). Off by default: at 1 client "
        "they cost 1.6-3.5 ms of server CPU per request (two runs; two lines, a rotating log file, Ray's log forwarding to the "
        "`aisys serve` terminal; docs/serving.md, Benchmarks). Turn on with --set serve.access_log=true.",
    )
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
    replica_cpus: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto",
        description="CPUs each replica reserves in Ray's scheduler (one torch thread, train.torch_threads). 'auto': "
        "1.0, except with num_replicas 'auto', where the replicas share one CPU (1/replicas each), so a retrain or "
        "an ingest on the same local Ray still finds the CPUs it found beside the old single replica.",
    )
    replica_memory_mb: int | None = Field(None, ge=1, description="Memory each replica reserves when scheduled; None: none.")
    user_code_thread: bool = Field(
        False,
        description="Run the app in each replica on a thread and event loop of its own (Ray Serve's default, "
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=1) instead of on the replica's own loop. Off by default: the "
        "app never blocks its loop (scoring and model loads run in worker threads), and the hop between the two "
        "loops cost throughput and latency (measured, docs/serving.md, Benchmarks). Set through the replicas' "
        "runtime_env, so it travels with the deployment and its Serve YAML.",
    )
    replica_niceness: int | None = Field(
        0,
        ge=0,
        le=19,
        description="The replicas' CPU niceness (RAY_worker_niceness in their runtime_env). Ray starts its workers at "
        "nice 15 so tasks cannot starve its own daemons; a replica is the server, and at 15 any process at the "
        "default 0 (Ray's dashboard agent exporting metrics every 10 s, a log shipper, the load itself) took the cores "
        "from it first (measured, docs/serving.md, 'Replica priority'). None: Ray's default. Below 0 needs privileges.",
    )
    freeze_heap: bool = Field(
        True,
        description="Freeze the Python heap a replica has built at start-up and after each model swap (gc.freeze), "
        "so the cyclic collector's full collections no longer walk it: each one paused every request in flight "
        "for about 0.5 s on 2 cores (measured, docs/serving.md, 'Full collections'). Off only to measure it.",
    )
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
    session_sync_wait_s: float = Field(
        1.0, ge=0,
        description="How long the actor holds a replica's sync call while nothing has changed, answering at once "
        "when an event arrives (a long poll): an idle store costs a replica about one call per this many seconds "
        "instead of one per session_sync_every_s, and a change made while a call waits reaches the replica at once. "
        "The bound above is unchanged. 0: every sync answers at once (one call per session_sync_every_s).",
    )
    session_warm_users: int = Field(
        10_000, ge=0,
        description="With the shared session actor, each replica's copy starts holding the sessions of this many "
        "most recently active users, taken from the actor in one call while the replica starts, so their first "
        "request on the replica makes no actor call (about 2 ms each, measured; docs/serving.md, Session store). "
        "0: the copy starts empty and fills on first reads.",
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

