"""Starting and reaching Ray with bounded resources.

A local Ray is started with explicit CPUs and a bounded object store (a
default ``ray.init`` reserves ~30% of RAM and starts ~22 processes). On a
cluster, ``ray.address: auto`` joins it instead.

``cfg.serve.ingress`` picks Serve's HTTP ingress for a Ray started here. Serve
reads that choice from environment variables when its processes start, so it
is set in this process's environment before ``ray.init``, and the private
Ray's processes inherit it. A Ray that is joined keeps the ingress it was
started with (on a cluster: the environment of ``ray start``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from aisys.config import AppConfig
from aisys.runtime.ingress import apply_ingress_environment, ingress_environment, private_haproxy_environment

if TYPE_CHECKING:
    from aisys.config import RayConfig

logger = logging.getLogger(__name__)

# Set before Ray or MLflow start so no process phones home (the machines here
# are offline, and a blocked call only adds latency).
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_DEDUP_LOGS": "1",
}

# Set (unless already set) only for a private Ray that init_ray starts. The GCS keeps the last N task events
# for the dashboard's task list; every actor call leaves ~2 events of ~3 KB, so under serving traffic Ray's
# default of 100,000 grows gcs_server by ~5.6 MB/min at 15 req/s up to ~350 MB (measured by
# benchmarks/soak.py: +162% in 30 minutes, the one process that grew more than 10%). 10,000 keeps the
# dashboard useful on a laptop; on a cluster set it in the environment of `ray start` (docs/operations.md).
#
# Ray Train: its controller polls the workers every 2 s by default, and a fit waits out several polls between
# starting its workers and returning; the spot-preemption watcher (one more actor per fit) and Ray Train's own
# Prometheus metrics serve clusters, not a private Ray. Polling every 0.5 s with both off took `aisys train`
# (default config, shop data, 3 epochs: SASRec fit + refit) from 47.1 / 45.7 s to 35.3 / 36.6 s, A/B alternated on
# the 2-core box, 2026-12-06.
PRIVATE_RAY_ENV = {
    "RAY_task_events_max_num_task_in_gcs": "10000",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
}

def quiet_environment() -> None:
    """Turn telemetry off for this process and every process it starts."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


# What the `aisys` command quiets unless -v/--verbose (docs/operations.md, "Console output"). MLflow reads its
# variables when it is imported, so they are set before any verb imports it.
CONSOLE_QUIET_ENV = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # the "Downloading artifacts" bars of every model load
    "MLFLOW_LOGGING_LEVEL": "ERROR",  # "Creating initial MLflow database tables", CloudPickle warnings
}
# Library loggers held at WARNING in the driver (Ray's own ray.init(logging_level=...) covers `ray`).
QUIET_LOGGERS = ("ray", "ray.train", "ray.tune", "ray.serve", "filelock", "urllib3", "alembic", "sqlalchemy")
# Warnings that tell a library's user (us) something, not an operator: MLflow's type-hint and input-example
# advice on every log_model, and Ray's deprecation notes. -v shows them.
QUIET_WARNING_MODULES = r"(mlflow|ray)(\..*)?$"
QUIET_WARNING_TEXT = r".*(Add type hints to the `predict` method|An input example was not provided)"


def quiet_console(verbose: bool = False) -> None:
    """Quiet Ray's and MLflow's console chatter in this process (the CLI calls it first; ``verbose`` keeps it).

    Only process-level settings: environment variables that MLflow reads at import, logger levels and warning
    filters. Worker logs are kept from the driver by ``init_ray(cfg, log_to_driver=False)``, Ray Data's by
    :func:`quiet_ray_data` and MLflow's direct prints by
    :func:`aisys.registry.mlflow_registry.quiet_mlflow`.
    """
    import warnings

    quiet_environment()
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    for key, value in CONSOLE_QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=QUIET_WARNING_MODULES)
    # MLflow attributes its log_model advice to the caller's module (stacklevel), so match it by text too.
    warnings.filterwarnings("ignore", message=QUIET_WARNING_TEXT, category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def quiet_ray_data() -> None:
    """Ray Data's console: no INFO lines (execution plans, "Progress will be logged") and no bars of its own.

    Ray Data configures the ``ray.data`` logger when it is imported; its file handler (the session's
    ``ray-data.log``) keeps everything.
    """
    import ray.data

    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ != "SessionFileHandler":
            handler.setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    # Ray Data warns once that its bars are off; taking that "once" here keeps the warning away (the CLI draws
    # its own progress for ingest).
    from ray.util.debug import log_once

    log_once("ray_data_progress_manager_disabled")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve to any interface


def private_ray_auth_mode(ray_cfg: "RayConfig", environ: dict[str, str] | None = None) -> str:
    """``RAY_AUTH_MODE`` for a private Ray: ``disabled`` while nothing listens beyond loopback, ``token`` when
    the dashboard is bound to another address (it can submit jobs, i.e. run code). An operator's explicit
    ``RAY_AUTH_MODE`` wins, except ``disabled`` with an exposed dashboard, which is refused."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("RAY_AUTH_MODE")
    exposed = ray_cfg.include_dashboard and not is_loopback(ray_cfg.dashboard_host)
    if exposed and explicit is not None and explicit.lower() != "token":
        raise ValueError(
            f"ray.dashboard_host={ray_cfg.dashboard_host!r} exposes the Ray dashboard beyond this machine, and "
            f"RAY_AUTH_MODE={explicit} would leave it without auth: unset RAY_AUTH_MODE (token auth is then turned "
            "on) or bind the dashboard to 127.0.0.1"
        )
    return explicit or ("token" if exposed else "disabled")


def dashboard_options(ray_cfg: "RayConfig") -> dict[str, Any]:
    """``ray.init`` keywords for a private Ray's dashboard (host and port only when it is started)."""
    if not ray_cfg.include_dashboard:
        return {"include_dashboard": False}
    options: dict[str, Any] = {"include_dashboard": True, "dashboard_host": ray_cfg.dashboard_host}
    if ray_cfg.dashboard_port is not None:
        options["dashboard_port"] = ray_cfg.dashboard_port
    return options


def with_dashboard_link(cfg: AppConfig) -> AppConfig:
    """``cfg`` with ``serve.ray_dashboard_url`` set to the dashboard of the Ray this process started, when the
    operator gave none: the operator view (``/ops``, admin key only) links to it. Call after :func:`init_ray`."""
    if cfg.serve.ray_dashboard_url or cfg.ray.address or not cfg.ray.include_dashboard:
        return cfg
    import ray

    if not ray.is_initialized():
        return cfg
    # Ray keeps the address its dashboard really bound (the port may be the next free one after 8265).
    url = ray._private.worker.global_worker.node.address_info.get("webui_url")
    if not url:
        return cfg
    url = url if "://" in url else f"http://{url}"
    return cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"ray_dashboard_url": url})})


def init_ray(cfg: AppConfig, **extra: Any):
    """Connect to Ray as the config says; a no-op if Ray is already up.

    Returns the ``ray`` module so callers need not import it at module level.
    """
    import ray

    quiet_environment()
    if ray.is_initialized():
        return ray
    # Inside `ray job submit` Ray sets RAY_ADDRESS: join that cluster rather
    # than starting a private one (num_cpus is not allowed when joining).
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        if cfg.serve.ingress != "proxy":
            logger.info("joining Ray at %s: serve.ingress=%s takes effect only if that cluster was started with %s",
                        address, cfg.serve.ingress, ingress_environment(cfg.serve.ingress))
        ray.init(address=address, **extra)
    else:
        # A private Ray owned by this process tree and torn down with it: token auth is for shared clusters
        # (`ray start`, KubeRay) and for a dashboard bound beyond loopback; see docs/operations.md.
        was = os.environ.get("RAY_AUTH_MODE")
        auth_mode = os.environ["RAY_AUTH_MODE"] = private_ray_auth_mode(cfg.ray)
        if auth_mode == "token" and was != "token":
            # Ray read RAY_AUTH_MODE into its cached config when it was imported; re-read it (as ray.init does
            # when it turns token auth on by itself), or this driver would talk to its own GCS without the token.
            from ray._raylet import Config

            Config.initialize("")
        for key, value in PRIVATE_RAY_ENV.items():
            os.environ.setdefault(key, value)
        apply_ingress_environment(cfg.serve.ingress)
        if cfg.serve.ingress == "haproxy":
            private_haproxy_environment()
        ray.init(
            num_cpus=cfg.ray.num_cpus,
            num_gpus=cfg.ray.num_gpus,
            object_store_memory=cfg.ray.object_store_memory_mb * 1024 * 1024,
            **dashboard_options(cfg.ray),
            configure_logging=True,
            logging_level="WARNING",
            **extra,
        )
    return ray


def kill_named_actor(name: str, namespace: str, release_timeout_s: float = 10.0) -> bool:
    """Kill the named (detached) actor; ``False`` when there is none (Ray must be up).

    ``ray.kill`` only asks the GCS to kill it; the name stays registered until the death is processed. We wait
    (up to ``release_timeout_s``) until the name is free, so a caller that recreates the actor next, or asks
    whether it is gone, never gets the dying one back.
    """
    import ray

    try:
        handle = ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    ray.kill(handle)
    deadline = time.monotonic() + release_timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=namespace)
        except ValueError:
            break
        time.sleep(0.05)
    return True
