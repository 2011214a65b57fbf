"""One validated configuration object for every stage.

`AppConfig` is loaded from a YAML file (``configs/local.yaml`` by default), then
overridden by environment variables (``AISYS__TRAIN__EPOCHS=3``) and finally by
CLI ``--set train.epochs=3`` pairs. Every section forbids unknown keys, so a
typo is an error that names the key instead of a silently ignored setting.

Nothing here touches the disk or the environment at import time: call
:func:`load_config`. The sections live in files by concern (``infra``: paths and
Ray; ``data``; ``model``: model, training, tuning; ``serving``: Serve, gateway,
online; ``lifecycle``: registry, gate, monitor, demo); import them from here.
"""

from aisys.config.app import AppConfig
from aisys.config.base import ConfigError
from aisys.config.data import DataConfig, FeaturesConfig, IngestConfig, MovieLensConfig, SimulatorConfig
from aisys.config.infra import PathsConfig, RayConfig
from aisys.config.lifecycle import DemoConfig, GateConfig, MonitorConfig, RegistryConfig
from aisys.config.loading import (
    DEFAULT_CONFIG_PATH,
    ENV_PREFIX,
    cli_overrides,
    config_from_dict,
    deep_merge,
    env_overrides,
    load_config,
)
from aisys.config.model import ModelConfig, StagesConfig, TrainConfig, TuneConfig
from aisys.config.serving import GatewayConfig, OnlineConfig, ServeConfig

__all__ = [
    "AppConfig",
    "ConfigError",
    "DEFAULT_CONFIG_PATH",
    "DataConfig",
    "DemoConfig",
    "ENV_PREFIX",
    "FeaturesConfig",
    "GateConfig",
    "GatewayConfig",
    "IngestConfig",
    "ModelConfig",
    "MonitorConfig",
    "MovieLensConfig",
    "OnlineConfig",
    "PathsConfig",
    "RayConfig",
    "RegistryConfig",
    "ServeConfig",
    "SimulatorConfig",
    "StagesConfig",
    "TrainConfig",
    "TuneConfig",
    "cli_overrides",
    "config_from_dict",
    "deep_merge",
    "env_overrides",
    "load_config",
]
