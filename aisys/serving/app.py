"""Build and run the aisys Serve application.

- :func:`build_app` is the typed application builder a Serve YAML points at
  (``import_path: aisys.serving.app:build_app``; see ``serve_configs/local.yaml``).
- :func:`start_serving` / :func:`stop_serving` run it from Python (CLI, demo, tests).

Deployment options (replicas, ``max_ongoing_requests``) come from ``cfg.serve``;
a Serve YAML's ``deployments:`` section, when present, overrides them.
"""

# No `from __future__ import annotations`: Serve inspects build_app's parameter
# annotation at run time to validate the YAML args into ServeAppArgs.
import logging
from pydantic import BaseModel, ConfigDict, Field

from aisys.config import AppConfig, load_config
# APP_NAME and replica_options are re-exported (the demo, benchmarks/serving.py).
from aisys.serving.serve_yaml import APP_NAME, deployment_options, replica_options  # noqa: F401

logger = logging.getLogger(__name__)


class ServeAppArgs(BaseModel):
    """The ``args:`` of the Serve YAML application."""

    model_config = ConfigDict(extra="forbid")

    config_path: str | None = Field(None, description="AppConfig YAML; None = configs/local.yaml or defaults.")
    overrides: list[str] = Field(default_factory=list, description="`section.key=value` pairs, like --set.")


def build_application(cfg: AppConfig):
    """The bound Serve application for ``cfg`` (returns ``ray.serve.Application``)."""
    from aisys.serving.deployment import RecommenderService

    # AppConfig makes local paths absolute when it is validated, so the dict
    # means the same thing in a replica whose working folder differs.
    # The same options the generated Serve YAMLs carry (`aisys deploy-config`): one source, no drift.
    return RecommenderService.options(**deployment_options(cfg)).bind(cfg.model_dump())


def build_app(args: ServeAppArgs):
    """Serve application builder for ``serve run``/``serve deploy`` YAMLs.

    ``args`` holds ``config_path`` and ``overrides``; Serve validates the
    YAML's dict into :class:`ServeAppArgs` (a plain dict is accepted too).
    Relative paths resolve against the working directory of the process that
    calls this (the repo root for ``serve run serve_configs/local.yaml``).
    """
    parsed = args if isinstance(args, ServeAppArgs) else ServeAppArgs.model_validate(args or {})
    cfg = load_config(parsed.config_path, parsed.overrides)
    return build_application(cfg)


def base_url(cfg: AppConfig) -> str:
    """The URL clients reach the API at, without a trailing slash."""
    prefix = cfg.serve.route_prefix.rstrip("/")
    return f"http://{cfg.serve.host}:{cfg.serve.port}{prefix}"


def start_serving(cfg: AppConfig, blocking: bool = False) -> str:
    """Start Serve on ``cfg.serve.host:port`` and deploy the app; return its base URL.

    Ray is started (or joined) via :func:`aisys.runtime.init_ray`. ``serve.start``
    must come before ``serve.run``: it is what picks the HTTP port. With
    ``blocking=True`` this only returns when the process is interrupted.
    """
    from ray import serve

    from aisys.runtime import init_ray, with_dashboard_link

    init_ray(cfg)
    cfg = with_dashboard_link(cfg)  # the operator view links to the dashboard of the Ray started here
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    url = base_url(cfg)
    logger.info("deploying %s at %s", APP_NAME, url)
    if blocking:
        print(f"aisys serving at {url}", flush=True)
    serve.run(build_application(cfg), name=APP_NAME, route_prefix=cfg.serve.route_prefix, blocking=blocking)
    return url


def stop_serving(cfg: AppConfig | None = None) -> None:
    """Shut Serve down (applications, proxies, controller); Ray itself stays up.

    With ``cfg``, the workspace's detached helpers that the replicas started go
    too: the shared session actor (it would otherwise keep its sessions for the
    next start) and the drift monitor (it would otherwise hold a worker process).
    """
    from ray import serve

    serve.shutdown()
    if cfg is None:
        return
    if cfg.online.session_store == "actor":
        from aisys.serving.session_actor import drop_session_actor

        drop_session_actor(cfg)
    if cfg.monitor.enabled:
        from aisys.monitoring.monitor_actor import drop_monitor

        drop_monitor(cfg)

