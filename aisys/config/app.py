"""`AppConfig`: every section in one object, the one that flows into every stage."""

from __future__ import annotations

from pydantic import model_validator

from aisys.config.base import _absolute, _Section
from aisys.config.data import DataConfig, FeaturesConfig, IngestConfig
from aisys.config.infra import PathsConfig, RayConfig
from aisys.config.lifecycle import DemoConfig, GateConfig, MonitorConfig, RegistryConfig
from aisys.config.model import ModelConfig, TrainConfig, TuneConfig
from aisys.config.serving import GatewayConfig, OnlineConfig, ServeConfig


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
