"""Loading: YAML, then ``AISYS__`` environment overrides, then ``--set`` pairs; validated once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from pydantic import ValidationError

from aisys.config.app import AppConfig
from aisys.config.base import ConfigError

ENV_PREFIX = "AISYS__"
DEFAULT_CONFIG_PATH = Path("configs/local.yaml")


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
