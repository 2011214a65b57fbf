"""The soak benchmark's stack: its config, a champion to serve (trained once per workspace) and the API keys."""

from __future__ import annotations

import argparse
import socket
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# ------------------------------------------------------------------ the stack


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def soak_config(workspace: Path, port: int, args: argparse.Namespace):
    """The config of the soak stack: production defaults, except a small quickly-trained model and the port."""
    from aisys.config import config_from_dict

    return config_from_dict({
        "paths": {"workspace": str(workspace)},
        "ray": {"num_cpus": 2, "object_store_memory_mb": 512, "include_dashboard": False},
        "data": {"raw_dir": str(workspace / "raw")},
        "train": {"epochs": args.epochs},
        "serve": {"host": "127.0.0.1", "port": port, "num_replicas": 1, "access_log": not args.no_access_log},
        "online": {"follow_alias_every_s": 10.0},
        "monitor": {"enabled": not args.no_monitor},
    }, "benchmarks/soak.py")


def ensure_champion(cfg, console) -> dict[str, Any]:
    """The workspace's champion; when there is none, simulate, ingest and train one (what the demo does)."""
    from aisys import pipeline
    from aisys.registry.mlflow_registry import get_model_info

    try:
        info = get_model_info(cfg, cfg.registry.champion_alias)
        console.print(f"reusing champion v{info['version']} of {cfg.paths.workspace}")
        return {"version": info["version"], "trained_s": 0.0, "reused": True}
    except LookupError:
        pass
    t0 = time.perf_counter()
    raw = pipeline.generate_raw_events(cfg)
    console.print(f"simulated {raw.rows} events; ingesting on Ray Data ...")
    manifest = pipeline.ingest(cfg, [raw.path], source="benchmarks/soak.py")
    console.print(f"snapshot {manifest.snapshot_id}; training {cfg.train.epochs} epochs on Ray Train ...")
    outcome = pipeline.train_from_lake(cfg, manifest.snapshot_id)
    took = round(time.perf_counter() - t0, 1)
    console.print(f"champion v{outcome.model_version} (hr@10 {outcome.metrics.get('hr@10', float('nan')):.3f}) "
                  f"in {took} s")
    return {"version": outcome.model_version, "trained_s": took, "reused": False, "metrics": outcome.metrics}


def create_keys(cfg, limited_rate: float, limited_burst: int) -> dict[str, str]:
    """One key per caller of the mix, hashed into the workspace's key file (names unique per run).

    The app, storefront and admin keys get limits no run reaches; ``limited`` gets ``limited_rate``/s.
    """
    from aisys.gateway import create_key
    from aisys.gateway.keys import FileKeyStore, keys_file_path

    store = FileKeyStore(keys_file_path(cfg))
    run = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    generous = {"rate_limit_per_s": 1e6, "rate_limit_burst": 1_000_000}
    return {
        "app": create_key(store, f"soak-app-{run}", ["recommend", "events"], **generous),
        "storefront": create_key(store, f"soak-storefront-{run}", ["storefront"], **generous),
        "admin": create_key(store, f"soak-admin-{run}", ["admin"], **generous),
        "limited": create_key(store, f"soak-limited-{run}", ["recommend"], rate_limit_per_s=limited_rate,
                              rate_limit_burst=limited_burst),
    }
