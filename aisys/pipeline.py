"""Stage compositions shared by the CLI, the demo and the `jobs/` entrypoints.

Each function takes the one :class:`AppConfig` and calls the stage modules; the
entrypoints stay a few lines long and behave the same on a laptop and under
``ray job submit``.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from aisys.config import AppConfig


def source_events(cfg: AppConfig) -> pa.Table:
    """Events from the configured source (the shop simulator or MovieLens-100K)."""
    if cfg.data.source == "movielens":
        from aisys.data.movielens import load_movielens

        return load_movielens(cfg.data.movielens, cfg.paths.cache_dir)
    from aisys.data.simulator import simulate_events

    return simulate_events(cfg.data.simulator)


def raw_events_path(cfg: AppConfig, name: str = "events") -> Path:
    """Default raw file path for the configured source and format."""
    return Path(cfg.data.raw_dir) / f"{cfg.data.source}-{name}.{cfg.data.raw_format}"


def generate_raw_events(
    cfg: AppConfig,
    out: str | Path | None = None,
    bad_share: float = 0.0,
    duplicate_share: float = 0.0,
    table: pa.Table | None = None,
):
    """Write the source's events (or ``table``) as a raw event file, optionally with injected faults."""
    from aisys.data.raw_files import write_raw_events

    events = source_events(cfg) if table is None else table
    path = Path(out) if out else raw_events_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".") or cfg.data.raw_format
    return write_raw_events(
        events, path, fmt=fmt, bad_share=bad_share, duplicate_share=duplicate_share, seed=cfg.data.simulator.seed
    )


def ingest(cfg: AppConfig, paths: list[str], source: str | None = None):
    """Ingest raw event files into a new lake snapshot (starts Ray if needed)."""
    from aisys.data.ingest import ingest_files
    from aisys.runtime import init_ray

    init_ray(cfg)
    return ingest_files(cfg, paths, source=source)


def train_from_lake(cfg: AppConfig, snapshot_id: str | None = None):
    """Read a lake snapshot (latest by default), train on Ray Train, register the model."""
    from aisys.data.lake import Lake
    from aisys.runtime import init_ray
    from aisys.training.pipeline import train_and_register

    lake = Lake.from_config(cfg.paths)
    manifest = lake.get(snapshot_id) if snapshot_id else lake.latest()
    if manifest is None:
        raise FileNotFoundError(f"the lake at {cfg.paths.lake_uri} has no snapshot yet: run `aisys ingest` first")
    events = lake.read_events(manifest.snapshot_id)
    init_ray(cfg)
    return train_and_register(cfg, events, manifest.snapshot_id)
