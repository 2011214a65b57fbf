"""The Serve config files and the RayService's ``serveConfigV2``, rendered from one :class:`AppConfig`.

One source for deployment options: :func:`deployment_options` is what ``aisys serve`` passes to
``RecommenderService.options()`` (:func:`aisys.serving.app.build_application`) and what the generated
``deployments:`` entry of a Serve YAML says, so ``aisys serve`` and ``serve run``/``serve deploy`` cannot drift
apart. :func:`render_serve_config` writes the YAML as text, with a comment beside each setting naming the
``serve.*`` key it comes from; :func:`render_rayservice` puts that text into a KubeRay manifest.

Pure: no Ray, no file access (``aisys.serving.deploy_config`` reads the config files and writes the outputs).
"""

from __future__ import annotations

import json
import textwrap
from typing import Any, Mapping, Sequence

import yaml

from aisys.config import AppConfig

APP_NAME = "aisys"  # the Serve application name (aisys.serving.app.APP_NAME)
DEPLOYMENT_NAME = "RecommenderService"  # the deployment's name (aisys.serving.deployment.DEPLOYMENT_NAME)
IMPORT_PATH = "aisys.serving.app:build_app"
PROXY_LOCATION = "EveryNode"
USER_CODE_THREAD_ENV = "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"  # serve.user_code_thread
NICENESS_ENV = "RAY_worker_niceness"  # serve.replica_niceness: read by a Ray worker when its process starts

WIDTH = 118  # longest line written
COMMENT_COLUMN = 44  # where an inline comment starts when the setting is shorter


# --- the options, shared with `aisys serve` ----------------------------------------------------------------


def per_process_state(cfg: AppConfig) -> list[str]:
    """The settings that keep state in each replica's own memory, which other replicas would not see."""
    held = []
    if cfg.online.session_store == "memory":
        held.append("online.session_store=memory")
    if cfg.gateway.auth and cfg.gateway.rate_limit_backend == "memory":
        held.append("gateway.rate_limit_backend=memory")
    return held


def replica_count(cfg: AppConfig) -> int:
    """``serve.num_replicas``, with ``auto`` resolved: one replica per CPU of the Ray that serves.

    A replica is one Python process and uses one core, as a uvicorn worker does; ``uvicorn --workers <cores>``
    got twice the requests/s of one replica on 2 cores (docs/serving.md, Benchmarks). With per-process state
    (:func:`per_process_state`), ``auto`` is 1: two replicas would each hold their own sessions or limits.
    """
    replicas = cfg.serve.num_replicas
    if replicas != "auto":
        return int(replicas)
    return 1 if per_process_state(cfg) else max(1, cfg.ray.num_cpus)


def replica_cpus(cfg: AppConfig) -> float:
    """``serve.replica_cpus``, with ``auto`` resolved: 1.0, or a share of one CPU among ``auto`` replicas.

    Ray's CPUs are a scheduling count, not a pinning: ``auto`` replicas together reserve the one CPU the old
    single replica reserved, so what ran beside it on the same local Ray (a retrain, an ingest) still fits.
    """
    cpus = cfg.serve.replica_cpus
    if cpus != "auto":
        return float(cpus)
    if cfg.serve.autoscaling or cfg.serve.num_replicas != "auto":
        return 1.0
    return round(1.0 / replica_count(cfg), 4)


def replica_options(cfg: AppConfig) -> dict[str, Any]:
    """``num_replicas`` or, with ``serve.autoscaling``, an ``autoscaling_config`` (bounds, target, delays)."""
    serve = cfg.serve
    if not serve.autoscaling:
        return {"num_replicas": replica_count(cfg)}
    scaling: dict[str, Any] = {
        "min_replicas": serve.min_replicas,
        "max_replicas": serve.max_replicas,
        "target_ongoing_requests": serve.target_ongoing_requests,
        "upscale_delay_s": serve.upscale_delay_s,
        "downscale_delay_s": serve.downscale_delay_s,
    }
    if serve.downscaling_factor is not None:
        scaling["downscaling_factor"] = serve.downscaling_factor
    return {"autoscaling_config": scaling}


def deployment_options(cfg: AppConfig) -> dict[str, Any]:
    """Every option the deployment runs with, in the form both ``.options()`` and a Serve YAML take."""
    serve = cfg.serve
    actor: dict[str, Any] = {"num_cpus": replica_cpus(cfg)}
    if serve.replica_memory_mb is not None:
        actor["memory"] = serve.replica_memory_mb * 1024 * 1024  # Ray counts bytes
    # Serve reads it when a replica's process starts; as an env var of the replicas' runtime_env it reaches them
    # wherever they run (an application's runtime_env, e.g. a working_dir, still applies: Serve merges the two).
    env_vars = {USER_CODE_THREAD_ENV: "1" if serve.user_code_thread else "0"}
    if serve.replica_niceness is not None:
        env_vars[NICENESS_ENV] = str(serve.replica_niceness)
    actor["runtime_env"] = {"env_vars": env_vars}
    return {
        **replica_options(cfg),
        "max_ongoing_requests": serve.max_ongoing_requests,
        "max_queued_requests": serve.max_queued_requests,
        "ray_actor_options": actor,
        # Applied through RecommenderService.reconfigure when a replica starts, and live on `serve deploy`.
        "user_config": {"max_batch_size": serve.max_batch_size, "batch_wait_timeout_s": serve.batch_wait_timeout_s},
        "logging_config": {"enable_access_log": serve.access_log},
    }


def joins_a_cluster(cfg: AppConfig) -> bool:
    """A config whose ``ray.address`` is set describes a cluster: its file is not on the nodes."""
    return cfg.ray.address is not None


def serve_document(cfg: AppConfig, config_path: str | None, overrides: Sequence[str]) -> dict[str, Any]:
    """The Serve config (``serve run``/``serve deploy`` schema) as data: what the rendered text parses to."""
    return {
        "http_options": {"host": cfg.serve.host, "port": cfg.serve.port},
        "proxy_location": PROXY_LOCATION,
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": cfg.serve.route_prefix,
                "import_path": IMPORT_PATH,
                "args": {"config_path": config_path, "overrides": list(overrides)},
                "deployments": [{"name": DEPLOYMENT_NAME, **deployment_options(cfg)}],
            }
        ],
    }


# --- config settings as `--set` pairs -------------------------------------------------------------------------


def yaml_scalar(value: Any) -> str:
    """``value`` as YAML text that loads back to ``value`` (plain where that is safe, else double-quoted)."""
    if isinstance(value, str):
        try:
            plain = value == value.strip() and value != "" and yaml.safe_load(value) == value
        except yaml.YAMLError:
            plain = False
        # '#' and ': ' are legal inside some plain scalars, but quoting them is never wrong.
        return value if plain and "#" not in value and ": " not in value else json.dumps(value)
    if isinstance(value, (list, dict)) and not value:
        return "[]" if isinstance(value, list) else "{}"
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


def config_overrides(settings: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every leaf of a config mapping as a ``section.key=value`` pair that ``--set`` parsing reads back."""
    pairs: list[str] = []
    for key, value in settings.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            pairs += config_overrides(value, dotted + ".")
        else:
            pairs.append(f"{dotted}={yaml_scalar(value)}")
    return pairs


# --- the text --------------------------------------------------------------------------------------------------


def _comment(paragraphs: Sequence[str], indent: str = "") -> list[str]:
    """``# `` lines: each paragraph wrapped to WIDTH; one starting with four spaces (a command) kept as is."""
    lines: list[str] = []
    for paragraph in paragraphs:
        if not paragraph:
            lines.append(f"{indent}#")
        elif paragraph.startswith("    "):
            lines.append(f"{indent}# {paragraph}")
        else:
            lines += textwrap.wrap(paragraph, WIDTH - len(indent) - 2, initial_indent=f"{indent}# ",
                                   subsequent_indent=f"{indent}# ", break_on_hyphens=False, break_long_words=False)
    return lines


def _with_note(text: str, note: str | None) -> list[str]:
    """``text`` with ``note`` beside it when it fits, else above it (wrapped)."""
    if not note:
        return [text]
    inline = f"{text.ljust(max(COMMENT_COLUMN, len(text) + 2))}# {note}"
    if len(inline) <= WIDTH:
        return [inline]
    indent = text[: len(text) - len(text.lstrip())]
    return _comment([note], indent) + [text]


def _emit(node: Mapping[str, Any], indent: int, path: str, notes: Mapping[str, str]) -> list[str]:
    """Block-style YAML for ``node`` with the notes of ``notes`` (keyed by dotted path, list indices left out)."""
    pad = " " * indent
    lines: list[str] = []
    for key, value in node.items():
        dotted = f"{path}.{key}" if path else key
        note = notes.get(dotted)
        if isinstance(value, Mapping) and value:
            lines += _with_note(f"{pad}{key}:", note)
            lines += _emit(value, indent + 2, dotted, notes)
        elif isinstance(value, list) and value:
            lines += _with_note(f"{pad}{key}:", note)
            for item in value:
                if isinstance(item, Mapping):
                    entry = _emit(item, indent + 4, dotted, notes)
                    first = next(n for n, line in enumerate(entry) if not line.lstrip().startswith("#"))
                    entry[first] = f"{pad}  - {entry[first][indent + 4:]}"
                    lines += entry
                else:
                    lines.append(f"{pad}  - {yaml_scalar(item)}")
        else:
            lines += _with_note(f"{pad}{key}: {yaml_scalar(value)}", note)
    return lines


def _notes(cfg: AppConfig, source: str) -> dict[str, str]:
    """What each setting means and which config key sets it."""
    on_cluster = joins_a_cluster(cfg)
    host = cfg.serve.host
    app, deployment = "applications", "applications.deployments"
    return {
        "http_options": "where Serve's HTTP proxy listens",
        "http_options.host": "serve.host" + (": reachable from a load balancer, not only this node"
                                            if host == "0.0.0.0" else ": this machine only" if host.startswith("127.")
                                            else ""),
        "http_options.port": "serve.port; must be free (other processes may hold 8000)",
        "proxy_location": "a proxy on every node: a load balancer can target any node",
        f"{app}.name": "the application name `aisys serve` uses too",
        f"{app}.route_prefix": "serve.route_prefix",
        f"{app}.import_path": "typed builder: args are validated into ServeAppArgs",
        f"{app}.args.config_path": (
            f"no config file on the nodes: the settings of {source} travel as the overrides below"
            if on_cluster else "the AppConfig the replicas load; relative to the folder `serve run` starts in"),
        f"{app}.args.overrides": (
            f"every setting of {source} (explained there), like --set; applied after AISYS__* variables"
            if on_cluster else "like --set, e.g. [\"online.canary_share=0.1\"]; applied after AISYS__* variables"),
        f"{deployment}.num_replicas": (
            "serve.num_replicas (serve.autoscaling: false)" if cfg.serve.num_replicas != "auto"
            else "serve.num_replicas: auto, one replica per CPU (ray.num_cpus), 1 with per-process state; each "
                 "replica loads the model"),
        f"{deployment}.autoscaling_config": "serve.autoscaling: true; replicas are interchangeable (shared sessions)",
        f"{deployment}.autoscaling_config.min_replicas": "serve.min_replicas: never fewer",
        f"{deployment}.autoscaling_config.max_replicas": "serve.max_replicas: cost ceiling, one CPU each",
        f"{deployment}.autoscaling_config.target_ongoing_requests": "serve.target_ongoing_requests per replica",
        f"{deployment}.autoscaling_config.upscale_delay_s": "serve.upscale_delay_s: ignores blips",
        f"{deployment}.autoscaling_config.downscale_delay_s": "serve.downscale_delay_s: a model reload is not free",
        f"{deployment}.autoscaling_config.downscaling_factor": "serve.downscaling_factor: <1 scales down gently",
        f"{deployment}.max_ongoing_requests": (
            "serve.max_ongoing_requests: requests one replica works on at once. Serve's default (5) collapsed to "
            "multi-second latency at 64 clients with idle CPUs: batching needs requests in flight to batch"),
        f"{deployment}.max_queued_requests": "serve.max_queued_requests: then 503 at once (-1: unbounded)",
        f"{deployment}.ray_actor_options.num_cpus": (
            "serve.replica_cpus: one torch thread per replica (train.torch_threads); 2 threads on a busy 2-core "
            "box were 13x slower" + ("" if cfg.serve.replica_cpus != "auto" or cfg.serve.autoscaling
                                     or cfg.serve.num_replicas != "auto"
                                     else ". auto: the replicas share one CPU of Ray's count, leaving the rest "
                                          "to a retrain or an ingest on the same Ray")),
        f"{deployment}.ray_actor_options.memory": (
            "serve.replica_memory_mb, in bytes: the model, every user's history and the session cache"),
        f"{deployment}.ray_actor_options.runtime_env.env_vars.{USER_CODE_THREAD_ENV}": (
            "serve.user_code_thread: 0 runs the app on the replica's own event loop (faster, measured)"),
        f"{deployment}.ray_actor_options.runtime_env.env_vars.{NICENESS_ENV}": (
            "serve.replica_niceness: Ray starts workers at nice 15; a replica serves at 0 (measured)"),
        f"{deployment}.user_config": "live-tunable without a restart (RecommenderService.reconfigure)",
        f"{deployment}.user_config.max_batch_size": "serve.max_batch_size: requests in one forward pass",
        f"{deployment}.user_config.batch_wait_timeout_s": "serve.batch_wait_timeout_s: wait for a batch to fill",
        f"{deployment}.logging_config.enable_access_log": "serve.access_log: a log line per request",
    }


def _ingress_paragraphs(cfg: AppConfig, settings: Mapping[str, Any], source: str, target: str,
                        ingress_env: Mapping[str, str]) -> list[str]:
    """How to get ``serve.ingress``: ``ingress_env`` maps each variable to its value as a shell writes it."""
    chosen = "ingress" in (settings.get("serve") or {})
    where = f"in {source}" if chosen else f"(the default: {source} does not set it)"
    said = f"Ingress: serve.ingress is `{cfg.serve.ingress}` {where}."
    why = "What each ingress does and how fast it is: docs/serving.md."
    if joins_a_cluster(cfg):
        todo = ("nothing to set (Ray's default)" if not ingress_env
                else "set " + " ".join(f"{key}={value}" for key, value in ingress_env.items()))
        return [
            f"{said} On a cluster Serve takes it from the environment of `ray start` on every node, not from this "
            f"file: {todo}. On KubeRay that is the containers' env in cluster/kuberay/rayservice.yaml "
            "(tests/unit/test_cluster_manifests.py checks it). " + why,
        ]
    if not ingress_env:
        return [
            f"{said} Serve takes it from the environment of the process that starts Ray, not from this file; it "
            "is Ray's default, so `serve run` needs no variable (`aisys serve` sets the environment itself). " + why,
        ]
    return [
        f"{said} Serve takes it from the environment of the process that starts Ray, not from this file, so "
        "start it as",
        *(f"    {key}={value} \\" for key, value in ingress_env.items()),
        f"    serve run {target}",
        "(`aisys serve` sets these itself; without them it runs through Serve's default proxy instead). " + why,
    ]


def render_serve_config(
    cfg: AppConfig,
    settings: Mapping[str, Any],
    *,
    source: str,
    set_pairs: Sequence[str] = (),
    target: str,
    regenerate: str,
    ingress_env: Mapping[str, str],
    embedded_in: str | None = None,
) -> str:
    """The Serve YAML for ``cfg`` as commented text.

    ``settings`` are the config file's settings with the ``set_pairs`` applied (before validation): on a cluster
    (``ray.address`` set) they travel as the application's overrides, since the file is not on the nodes;
    locally the application names ``source`` and passes ``set_pairs``. ``target`` is where the text goes,
    ``regenerate`` the command that writes it, ``ingress_env`` the variables that select ``serve.ingress``
    (values quoted for a shell), ``embedded_in`` the KubeRay manifest that carries the same text, if one does.
    """
    on_cluster = joins_a_cluster(cfg)
    origin = source + "".join(f" --set {pair}" for pair in set_pairs)
    generated = (f"Generated by `aisys deploy-config` from {origin}: edit that, then regenerate with `{regenerate}` "
                 "(`make test` fails while a checked-in file and its config disagree). The `serve.*` key each "
                 "setting comes from is named beside it; `aisys serve` runs with the same options.")
    if on_cluster:
        embedded = (f" KubeRay's RayService embeds this text as its serveConfigV2 ({embedded_in}; regenerated with "
                    "it)." if embedded_in else "")
        header = [
            f"Ray Serve config for a cluster. {generated}{embedded}",
            "",
            "Deploy with token auth (export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=... first):",
            f"    serve deploy {target} --address http://<head>:8265",
            "",
            "The nodes' image has the aisys package installed (cluster/README.md), so no working_dir is needed. "
            "To ship code without rebuilding the image, add `runtime_env: {working_dir: \"https://.../aisys-<sha>"
            ".zip\"}` to the application of a copy: a Serve YAML's working_dir must be a URI.",
        ]
        config_path, overrides = None, config_overrides(settings)
    else:
        header = [
            f"Ray Serve config for a laptop. {generated} Every setting is explained in serve_configs/README.md.",
            "",
            "Run it from the repo root (needs a registered champion: train first); `serve deploy` takes the same "
            "file on a running cluster:",
            f"    serve run {target}",
        ]
        config_path, overrides = source, list(set_pairs)
    header += ["", *_ingress_paragraphs(cfg, settings, source, target, ingress_env)]
    document = serve_document(cfg, config_path, overrides)
    notes = _notes(cfg, source)
    body: list[str] = []
    for key in document:  # a blank line between the top-level sections
        body += [""] + _emit({key: document[key]}, 0, "", notes)
    return "\n".join(_comment(header) + body) + "\n"


def render_rayservice(manifest_text: str, serve_text: str) -> str:
    """``manifest_text`` with its ``serveConfigV2: |`` block replaced by ``serve_text``; the rest kept as is."""
    lines = manifest_text.splitlines(keepends=True)
    start = next((n for n, line in enumerate(lines) if line.strip() == "serveConfigV2: |"), None)
    if start is None:
        raise ValueError("the RayService manifest has no `serveConfigV2: |` block to fill: add one under spec")
    indent = len(lines[start]) - len(lines[start].lstrip()) + 2
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) >= indent):
        end += 1
    block = [(" " * indent + line if line.strip() else "\n") for line in serve_text.splitlines(keepends=True)]
    return "".join(lines[: start + 1] + block + lines[end:])
