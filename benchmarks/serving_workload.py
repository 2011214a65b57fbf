"""The serving benchmark's workload: the config each server runs, a registered model, users, the bare handler.

Imported by ``benchmarks/serving.py`` and by the server processes it starts (``serving_servers.py``).
"""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from aisys.config import AppConfig, load_config
from aisys.loadgen.stats import latency_summary

K = 10
# What the benchmark changes in the shipped configuration (configs/local.yaml + AppConfig defaults), and why:
# every other setting is what `aisys serve` ships with. Printed in the table header.
RAISED_OUT_OF_THE_WAY = {
    "gateway.cache_ttl_s": 0,  # every request is scored by the model, not answered from the cache
    "gateway.rate_limit_per_s": 1e9,  # the limiter still runs for every request, it just never refuses
    "gateway.rate_limit_burst": 1_000_000_000,
    "online.latency_budget_ms": 10_000,  # a busy box must not turn model answers into cheaper fallbacks
}


def bench_overrides(workdir: Path, port: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``--set``-style overrides: the workspace under ``workdir``, the port, and :data:`RAISED_OUT_OF_THE_WAY`."""
    return {"paths.workspace": str(workdir / "ws"), "serve.port": port, **RAISED_OUT_OF_THE_WAY, **(extra or {})}


def nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}`` (a config YAML's shape)."""
    out: dict[str, Any] = {}
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def write_config(path: Path, overrides: dict[str, Any], base: Path | None = None) -> AppConfig:
    """Write the shipped config (``base`` or configs/local.yaml) with ``overrides`` merged to ``path``; load it."""
    from aisys.config import DEFAULT_CONFIG_PATH, deep_merge

    base = base or Path(__file__).resolve().parent.parent / DEFAULT_CONFIG_PATH
    data = (yaml.safe_load(base.read_text()) or {}) if base.exists() else {}
    path.write_text(yaml.safe_dump(deep_merge(data, nested(overrides)), sort_keys=False))
    return load_config(path, environ={})


def synthetic_events(n_users: int, n_items: int, length: int, seed: int = 0):
    """``n_users`` users, each with ``length`` views drawn Zipf-like from ``n_items`` items (an events table)."""
    import pyarrow as pa

    from aisys.schemas import EVENT_SCHEMA

    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    items = rng.choice(n_items, size=(n_users, length), p=popularity / popularity.sum())
    items[:, 0] = np.arange(n_users) % n_items  # every item appears, so the vocabulary has n_items
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    n = n_users * length
    users = np.repeat(np.arange(n_users), length)
    steps = np.tile(np.arange(length), n_users)
    return pa.Table.from_pydict({
        "event_id": [f"e{u}-{t}" for u, t in zip(users, steps)],
        "user_id": [f"user{u}" for u in users],
        "item_id": [f"item{i:05d}" for i in items.reshape(-1)],
        "event_type": ["view"] * n,
        "value": [1.0] * n,
        "timestamp": [t0 + timedelta(minutes=int(t), seconds=int(u)) for u, t in zip(users, steps)],
        "category": [f"c{i % 20}" for i in items.reshape(-1)],
        "price": [2.0] * n,
    }, schema=EVENT_SCHEMA)


def register_synthetic_model(cfg: AppConfig, n_users: int, n_items: int) -> tuple[str, list[str]]:
    """Write a lake snapshot and register an untrained SASRec over it as champion; ``(version, user ids)``.

    Untrained weights cost the same per request as trained ones (64-d, 2 layers, 2 heads, windows of 50).
    """
    import torch

    from aisys.data.lake import COUNT_KEYS, Lake, Manifest, new_snapshot_id
    from aisys.features.sequences import build_vocabulary
    from aisys.models.bundle import ModelBundle
    from aisys.models.sasrec import SASRec, SASRecConfig
    from aisys.registry.mlflow_registry import log_and_register
    from aisys.schemas import schema_hash

    events = synthetic_events(n_users, n_items, cfg.features.max_seq_len)
    lake = Lake.from_config(cfg.paths)
    snapshot_id = new_snapshot_id()
    files = lake.write_event_files(events, snapshot_id)
    counts = dict.fromkeys(COUNT_KEYS, 0) | {"input": events.num_rows, "clean": events.num_rows,
                                             "written": events.num_rows, "total_rows": events.num_rows}
    lake.commit(Manifest(snapshot_id=snapshot_id, parent_id=None, created_at=datetime.now(timezone.utc).isoformat(),
                         source="benchmarks/serving.py", schema_hash=schema_hash(), counts=counts,
                         files=[path for path, _ in files]))
    torch.manual_seed(0)
    vocab = build_vocabulary(events, cfg.features.event_weights)
    config = SASRecConfig.from_app(cfg, vocab.n_items)
    bundle = ModelBundle(model_kind="sasrec", model_config=config.to_dict(), item_ids=vocab.item_ids,
                         item_popularity=vocab.item_popularity, state_dict=SASRec(config).state_dict(),
                         item_categories=vocab.item_categories, max_seq_len=cfg.features.max_seq_len)
    registered = log_and_register(cfg, bundle, params={"source": "benchmarks/serving.py"}, metrics={},
                                  history=[], snapshot_id=snapshot_id, alias=cfg.registry.champion_alias)
    return registered.version, [f"user{u}" for u in range(n_users)]


CACHE_ENV = "AISYS_BENCH_CACHE"  # where trained champions are kept between runs (default ~/.cache/aisys-bench)
# What a trained champion depends on besides the config: the code that builds, trains and gates it.
TRAINING_CODE = ("aisys/data", "aisys/features", "aisys/models", "aisys/training", "aisys/registry",
                 "aisys/evaluation", "aisys/pipeline.py", "aisys/schemas.py")
# The config sections that decide the trained champion (paths, serving and gateway settings do not).
TRAINING_SECTIONS = ("data", "ingest", "features", "model", "train", "registry", "gate", "tune")


def training_key(cfg: AppConfig, repo: Path) -> str:
    """A hash of what decides the champion ``aisys train`` produces: the training sections of ``cfg`` and the
    source of the packages that build, train and gate it. A changed model or trainer trains a new champion."""
    import hashlib
    import json

    digest = hashlib.sha256()
    dumped = cfg.model_dump(mode="json")
    digest.update(json.dumps({k: dumped.get(k) for k in TRAINING_SECTIONS}, sort_keys=True).encode())
    for entry in TRAINING_CODE:
        root = repo / entry
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            digest.update(str(path.relative_to(repo)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def shipped_champion_workspace(base: Path | None, repo: Path, *, retrain: bool = False,
                               log=print) -> tuple[Path, str]:
    """A workspace whose champion was trained the way a user gets one: ``aisys data``, ``aisys ingest``,
    ``aisys train`` (the README's quick start) on the shipped config (``base`` or configs/local.yaml: the
    default ``model.kind``, the demo's simulator data), each verb in its own process as a user runs it.

    Kept under ``$AISYS_BENCH_CACHE`` (default ``~/.cache/aisys-bench``) by :func:`training_key`, so a second
    run reuses it (the benchmark serves a copy, never the cached folder itself); ``retrain`` trains anew.
    Returns ``(workspace, the key)``.
    """
    import os
    import shutil
    import subprocess
    import sys

    cache_root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "aisys-bench")
    staging = cache_root / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    probe = write_config(staging / "config-key.yaml", {"paths.workspace": str(staging / "ws")}, base=base)
    key = training_key(probe, repo)
    done = cache_root / f"serving-champion-{key}"
    if (done / "ws" / "mlflow.db").exists() and (done / "trained.ok").exists() and not retrain:
        log(f"reusing the trained champion in {done} (key {key})")
        return done / "ws", key
    shutil.rmtree(done, ignore_errors=True)
    building = cache_root / f"building-{key}-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    config = building / "config.yaml"
    # Train where the result will live: MLflow records absolute artifact paths, so the folder is not moved after.
    write_config(config, {"paths.workspace": str(done / "ws")}, base=base)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    try:
        for verb in (["data"], ["ingest"], ["train"]):
            log(f"training the shipped champion: aisys {verb[0]} (key {key})")
            run = subprocess.run([sys.executable, "-m", "aisys.cli", *verb, "--config", str(config)], cwd=repo,
                                 env=env, capture_output=True, text=True)
            if run.returncode != 0:
                raise RuntimeError(f"aisys {verb[0]} failed ({run.returncode}): {run.stderr[-2000:]}")
        shutil.copy(config, done / "config.yaml")
        (done / "trained.ok").write_text(key + "\n")
    except BaseException:
        shutil.rmtree(done, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return done / "ws", key


def champion_description(cfg: AppConfig) -> str:
    """``multistage v1 (sasrec, ease, slit, ...), 300 items``: the registry's champion, for the table header."""
    from aisys.registry.mlflow_registry import load_bundle

    bundle, info = load_bundle(cfg, cfg.registry.champion_alias)
    stages = [s.get("name", "?") for s in (bundle.model_config or {}).get("stages", [])]
    detail = f" (sasrec + {', '.join(stages)})" if stages else ""
    return f"{bundle.model_kind} v{info.get('version', '?')}{detail}, {len(bundle.item_ids) - 1} items"


def champion_users(cfg: AppConfig) -> list[str]:
    """The users of the champion's lake snapshot (a trained workspace's real users)."""
    from aisys.data.lake import Lake
    from aisys.registry.mlflow_registry import get_model_info

    info = get_model_info(cfg, cfg.registry.champion_alias)
    events = Lake.from_config(cfg.paths).read_events(info.get("snapshot_id"))
    return sorted(set(events.column("user_id").to_pylist()))


def bench_key(cfg: AppConfig) -> str:
    """An API key with the ``recommend`` scope and a limit no run reaches (the limiter still runs)."""
    from aisys.gateway import create_key
    from aisys.gateway.keys import FileKeyStore, keys_file_path

    return create_key(FileKeyStore(keys_file_path(cfg)), "bench", ["recommend"],
                      rate_limit_per_s=1e9, rate_limit_burst=1_000_000_000)


async def local_service(cfg: AppConfig):
    """The ``OnlineService`` a replica builds (champion from the registry, sessions seeded from its snapshot),
    with an in-process session store and no Ray: what a uvicorn worker and the bare handler serve from."""
    from aisys.data.lake import Lake
    from aisys.registry.mlflow_registry import load_bundle
    from aisys.serving.api_models import ModelOut
    from aisys.serving.collector_store import collector_folder
    from aisys.serving.event_log import JsonlEventLog
    from aisys.serving.recommender import Recommender, retrieval_options
    from aisys.serving.rules import JsonFileInventory
    from aisys.serving.service import OnlineService, ServedModel
    from aisys.serving.session_store import InMemorySessionStore, sessions_from_events
    from aisys.serving.deployment import stock_path

    bundle, info = load_bundle(cfg, cfg.registry.champion_alias)
    store = InMemorySessionStore(cfg.online.max_history, cfg.online.max_sessions)
    snapshot_id = bundle.lineage.get("snapshot_id") or info.get("snapshot_id")
    events = Lake.from_config(cfg.paths).read_events(snapshot_id)
    await store.bulk_load(sessions_from_events(events, bundle.item_index()), snapshot_id)
    recommender = Recommender(bundle, torch_threads=cfg.train.torch_threads, **retrieval_options(cfg.online))
    champion = ServedModel(recommender, ModelOut.describe(bundle, info, default_name=cfg.registry.model_name))
    return OnlineService(store=store, event_log=JsonlEventLog(collector_folder(cfg)),
                         inventory=JsonFileInventory(stock_path(cfg)), online=cfg.online, champion=champion)


async def bare_handler(cfg: AppConfig, users: list[str], n: int) -> dict[str, Any]:
    """Latency of ``service.recommend`` called directly (no HTTP, no gateway), one call at a time."""
    service = await local_service(cfg)
    rng = random.Random(1)
    for _ in range(20):  # warm torch and the thread pool
        await service.recommend(rng.choice(users), K)
    times = []
    for _ in range(n):
        t = asyncio.get_running_loop().time()
        await service.recommend(rng.choice(users), K)
        times.append(asyncio.get_running_loop().time() - t)
    return {"calls": n, **latency_summary(times, digits=3)}
