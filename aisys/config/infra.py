"""Where state lives and how Ray is reached: the ``paths`` and ``ray`` sections."""

from __future__ import annotations

from pydantic import Field, model_validator

from aisys.config.base import _absolute, _absolute_sqlite, _Section


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


class RayConfig(_Section):
    """How to reach Ray. ``address=None`` starts a bounded local Ray."""

    address: str | None = Field(None, description="Ray address ('auto' on a cluster); None starts a local Ray.")
    num_cpus: int = Field(2, ge=1, description="CPUs for a local Ray.")
    num_gpus: int = Field(0, ge=0, description="GPUs for a local Ray.")
    object_store_memory_mb: int = Field(768, ge=78, description="Object store size for a local Ray.")
    include_dashboard: bool = Field(
        False, description="Start the Ray dashboard with a local Ray (~11 more processes, ~1 GB; docs/capacity.md)."
    )
    dashboard_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description=(
            "Address a local Ray's dashboard binds. Loopback (the default) keeps it on this machine; any other "
            "address (0.0.0.0, a LAN IP) turns Ray's token auth on for that Ray (RAY_AUTH_MODE=token, token in "
            "~/.ray/auth_token), because the dashboard can submit jobs that run code."
        ),
    )
    dashboard_port: int | None = Field(
        None, ge=1, le=65535, description="Port of a local Ray's dashboard; None = 8265, or the next free one."
    )

