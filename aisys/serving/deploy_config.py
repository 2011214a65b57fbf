"""The checked-in deployment files, generated from the config files: render, check, write.

Each file in :data:`GENERATED` comes from one file under ``configs/``:

- ``serve_configs/local.yaml`` from ``configs/local.yaml`` (``serve run`` on a laptop),
- ``serve_configs/cluster.yaml`` from ``configs/cluster.yaml`` (``serve deploy`` to a cluster),
- ``cluster/kuberay/rayservice.yaml``'s ``serveConfigV2`` block: the same text as ``serve_configs/cluster.yaml``;
  the rest of the manifest (pods, images, autoscaler) is Kubernetes, not AppConfig, and stays hand-written.

The config files are read as the CLI reads them, minus the environment: an ``AISYS__*`` variable of the shell
that runs the generator must not leak into a checked-in file (the replicas still apply theirs at run time).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from aisys.config import AppConfig, ConfigError, cli_overrides, config_from_dict, deep_merge
from aisys.runtime.ingress import ingress_environment
from aisys.serving.serve_yaml import render_rayservice, render_serve_config

WRITE_COMMAND = "aisys deploy-config --write"


class OutOfDate(ValueError):
    """A checked-in file differs from what its config generates."""


@dataclass(frozen=True)
class GeneratedFile:
    """A checked-in file and the config file it is generated from (both relative to the repo root)."""

    path: str
    source: str
    kind: Literal["serve", "rayservice"] = "serve"


GENERATED: tuple[GeneratedFile, ...] = (
    GeneratedFile("serve_configs/local.yaml", "configs/local.yaml"),
    GeneratedFile("serve_configs/cluster.yaml", "configs/cluster.yaml"),
    GeneratedFile("cluster/kuberay/rayservice.yaml", "configs/cluster.yaml", kind="rayservice"),
)


def read_settings(path: Path, set_pairs: Sequence[str] = ()) -> tuple[dict[str, Any], AppConfig]:
    """The file's settings with ``set_pairs`` applied, and the validated config they make (no environment)."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    settings = deep_merge(loaded, cli_overrides(set_pairs))
    return settings, config_from_dict(settings, str(path))


def ingress_variables(ingress: str) -> dict[str, str]:
    """The variables that select ``ingress``, each value quoted as a shell line sets it (HAProxy: plus the shim)."""
    variables = {key: shlex.quote(value) for key, value in ingress_environment(ingress).items()}
    if "RAY_SERVE_ENABLE_HA_PROXY" in variables:
        # aisys.runtime.ingress.apply_ingress_environment writes it for `aisys serve`; by hand it is one command.
        shim = "from aisys.runtime.ingress import write_haproxy_shim as w; print(w())"
        variables["RAY_SERVE_HAPROXY_BINARY_PATH"] = f"\"$(python -c '{shim}')\""
    return variables


def render_serve_file(root: Path, source: str, set_pairs: Sequence[str] = (), *, target: str,
                      regenerate: str = WRITE_COMMAND, embedded_in: str | None = None) -> str:
    """The Serve YAML generated from ``root/source`` (``source`` is written into it as given)."""
    settings, cfg = read_settings(root / source, set_pairs)
    return render_serve_config(cfg, settings, source=source, set_pairs=set_pairs, target=target,
                               regenerate=regenerate, ingress_env=ingress_variables(cfg.serve.ingress),
                               embedded_in=embedded_in)


def render_generated(root: Path, generated: GeneratedFile) -> str:
    """What ``generated`` should hold, rendered from its config (a manifest keeps its hand-written parts)."""
    manifests = [g.path for g in GENERATED if g.kind == "rayservice" and g.source == generated.source]
    embedded_in = manifests[0] if manifests else None
    if generated.kind == "serve":
        return render_serve_file(root, generated.source, target=generated.path, embedded_in=embedded_in)
    serve_path = next(g.path for g in GENERATED if g.kind == "serve" and g.source == generated.source)
    serve_text = render_serve_file(root, generated.source, target=serve_path, embedded_in=embedded_in)
    manifest = root / generated.path
    if not manifest.is_file():
        raise FileNotFoundError(f"{generated.path} not found under {root}: run from the repository root")
    return render_rayservice(manifest.read_text(), serve_text)


def select(source: str | None = None) -> list[GeneratedFile]:
    """The generated files, or those generated from ``source`` (a usage error when there are none)."""
    if source is None:
        return list(GENERATED)
    wanted = Path(source).as_posix().removeprefix("./")
    chosen = [g for g in GENERATED if g.source == wanted]
    if not chosen:
        sources = sorted({g.source for g in GENERATED})
        raise ConfigError(f"no checked-in file is generated from {source}; the sources are {', '.join(sources)} "
                          "(print a Serve config from any file with `aisys deploy-config --config FILE`)")
    return chosen


def stale(root: Path, files: Sequence[GeneratedFile]) -> list[tuple[GeneratedFile, str]]:
    """``(file, expected text)`` for each file whose content differs from what its config generates."""
    out = []
    for generated in files:
        expected = render_generated(root, generated)
        current = root / generated.path
        if not current.is_file() or current.read_text() != expected:
            out.append((generated, expected))
    return out


def write(root: Path, files: Sequence[GeneratedFile]) -> list[GeneratedFile]:
    """Regenerate ``files`` under ``root``; return those whose content changed."""
    changed = stale(root, files)  # every file is rendered before any is written: a bad config writes nothing
    for generated, expected in changed:
        (root / generated.path).write_text(expected)
    return [generated for generated, _ in changed]


def command_line(source: str | None, set_pairs: Sequence[str]) -> str:
    """The ``aisys deploy-config`` command that prints the same rendering again."""
    parts = ["aisys", "deploy-config"] + (["--config", source] if source else [])
    for pair in set_pairs:
        parts += ["--set", pair]
    return shlex.join(parts)
