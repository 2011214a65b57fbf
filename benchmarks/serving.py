"""Serving benchmark: the full Ray Serve app against the same FastAPI app under plain uvicorn, in one run.

One registered SASRec (untrained weights cost the same as trained ones: 64-d, 2 layers, 2 heads, windows of
50, ``--items`` items) is served by each *server mode* in turn, each in its own process, while this process
drives the load (aiohttp on uvloop: the client never shares the server's event loop):

- ``uvicorn``: ``build_fastapi_app`` over an ``OnlineService`` built the way a replica builds one (same model,
  same rules, same gateway with the in-memory limiter), in one plain uvicorn process, no Ray;
- ``proxy:N``: the Serve app (``start_serving``: one replica, ``max_ongoing_requests=N``) behind Serve's default
  Python HTTP proxy;
- ``direct:N``: Ray started with ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``; clients call the replica's direct-ingress
  port (``RAY_SERVE_DIRECT_INGRESS_MIN/MAX_HTTP_PORT``);
- ``haproxy:N``: Ray started with ``RAY_SERVE_ENABLE_HA_PROXY=1`` (the HAProxy binary in the Ray wheel);
- a third field, ``direct:64:1``, sets the ``@serve.batch`` wait in ms (``user_config.batch_wait_timeout_s``).

Each Serve mode needs a fresh Ray started with its environment, hence one process per mode. Per mode it
measures ``GET /recommendations/{user}?k=10`` (known users drawn at random, every answer scored by the model:
the response cache is off and the latency budget generous, and answers that still fell back are counted):

- closed loop at ``--concurrency`` clients (1, 16, 64): requests/s, p50, p99, errors, fallbacks;
- open loop at ``--rate`` requests/s (200): latency from each request's *scheduled* send time, so a stalled
  server cannot hide its queue (no coordinated omission).

Also the *bare handler*: ``await service.recommend(user, 10)`` in this process, no HTTP, as the floor that the
median overhead of each mode is measured against. The run ends with the table, the Serve/uvicorn ratios and
the load average (the box is shared), and writes ``benchmarks/results/serving.json`` (+ ``serving.png``).

    python benchmarks/serving.py                 # every mode, 8 s per cell (~10 min)
    python benchmarks/serving.py --quick         # smoke run: 2 s per cell, fewer requests
    python benchmarks/serving.py --modes uvicorn,direct:64 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from aisys.config import AppConfig, config_from_dict

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
# kind:max_ongoing_requests[:batch wait ms]; without a wait, the deployment's default batching.
DEFAULT_MODES = ("uvicorn", "proxy:64", "proxy:5", "direct:64", "direct:5", "haproxy:64", "direct:64:1")
SERVE_ENV = {  # what each Serve mode sets before its Ray starts
    "proxy": {},
    "direct": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1"},
}
QUIET = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
         "RAY_AUTH_MODE": "disabled"}
K = 10
DIRECT_PORT_SPAN = 20


# ------------------------------------------------------------------ the workload: config, data, model


def bench_config(workdir: Path, port: int, max_ongoing: int = 64) -> AppConfig:
    """The config every server mode runs: realistic model dims, cache off, in-process limiter and sessions.

    The response cache is off so every request is scored by the model; the rate limiter and session store are
    the in-process ones so Serve and uvicorn do the same work per request (the shared actors add an actor call
    each; see docs/gateway.md); the latency budget is generous so a busy box does not turn model answers into
    cheaper popularity answers.
    """
    return config_from_dict({
        "paths": {"workspace": str(workdir / "ws"), "lake_uri": str(workdir / "lake"),
                  "mlflow_tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
                  "mlflow_artifact_uri": str(workdir / "mlartifacts")},
        "ray": {"num_cpus": 2, "object_store_memory_mb": 512, "include_dashboard": False},
        "features": {"max_seq_len": 50},
        "model": {"embedding_dim": 64, "n_layers": 2, "n_heads": 2, "dropout": 0.0},
        "serve": {"host": "127.0.0.1", "port": port, "num_replicas": 1, "max_ongoing_requests": max_ongoing,
                  "access_log": False},
        "gateway": {"rate_limit_backend": "memory", "cache_ttl_s": 0},
        "online": {"session_store": "memory", "follow_alias_every_s": 0, "latency_budget_ms": 10_000},
        "monitor": {"enabled": False},
    }, "benchmarks/serving.py")


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


def prepare(cfg: AppConfig, n_users: int, n_items: int) -> tuple[str, str]:
    """Write a lake snapshot, register an untrained SASRec over it as champion, make an API key.

    Returns ``(model version, API key)``. The key has the ``recommend`` scope and a limit no run reaches.
    """
    import torch

    from aisys.data.lake import COUNT_KEYS, Lake, Manifest, new_snapshot_id
    from aisys.features.sequences import build_vocabulary
    from aisys.gateway import create_key
    from aisys.gateway.keys import FileKeyStore, keys_file_path
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
    key = create_key(FileKeyStore(keys_file_path(cfg)), "bench", ["recommend"],
                     rate_limit_per_s=1e9, rate_limit_burst=1_000_000_000)
    return registered.version, key


async def local_service(cfg: AppConfig):
    """The ``OnlineService`` a replica builds (champion from the registry, sessions seeded from its snapshot),
    without Ray: what the uvicorn server and the bare-handler measurement serve from."""
    from aisys.data.lake import Lake
    from aisys.registry.mlflow_registry import load_bundle
    from aisys.serving.api_models import ModelOut
    from aisys.serving.event_log import JsonlEventLog
    from aisys.serving.recommender import Recommender, retrieval_options
    from aisys.serving.rules import JsonFileInventory
    from aisys.serving.service import OnlineService, ServedModel
    from aisys.serving.session_store import InMemorySessionStore, sessions_from_events

    bundle, info = load_bundle(cfg, cfg.registry.champion_alias)
    store = InMemorySessionStore(cfg.online.max_history)
    snapshot_id = bundle.lineage.get("snapshot_id") or info.get("snapshot_id")
    events = Lake.from_config(cfg.paths).read_events(snapshot_id)
    await store.bulk_load(sessions_from_events(events, bundle.item_index()), snapshot_id)
    recommender = Recommender(bundle, torch_threads=cfg.train.torch_threads, **retrieval_options(cfg.online))
    champion = ServedModel(recommender, ModelOut.describe(bundle, info, default_name=cfg.registry.model_name))
    workspace = Path(cfg.paths.workspace)
    return OnlineService(store=store, event_log=JsonlEventLog(workspace / "collector"),
                         inventory=JsonFileInventory(workspace / "online" / "stock.json"), online=cfg.online,
                         champion=champion)


# ------------------------------------------------------------------ servers (child processes)


def run_uvicorn_server(cfg: AppConfig) -> None:
    """Serve ``build_fastapi_app`` with the gateway under plain uvicorn (one process, one event loop)."""
    import uvicorn

    from aisys.gateway import Gateway
    from aisys.serving.routes import build_fastapi_app

    service = asyncio.run(local_service(cfg))
    app = build_fastapi_app(service, default_k=cfg.serve.default_k, max_k=cfg.serve.max_k,
                            gateway=Gateway.from_config(cfg))
    uvicorn.run(app, host=cfg.serve.host, port=cfg.serve.port, log_level="warning", access_log=False)


def run_serve_server(cfg: AppConfig, batch_wait_ms: float | None = None) -> None:
    """Start Ray (with the mode's environment, set by the parent) and the Serve app; stop when stdin closes.

    ``batch_wait_ms`` overrides the ``@serve.batch`` wait (``user_config.batch_wait_timeout_s``)."""
    from aisys.runtime import init_ray
    from aisys.serving.app import start_serving, stop_serving

    ray = init_ray(cfg)
    if batch_wait_ms is None:
        start_serving(cfg)  # exactly what `aisys serve` runs
    else:  # the same application, with the deployment's live-tunable batching set (user_config)
        from ray import serve

        from aisys.serving.app import APP_NAME, replica_options
        from aisys.serving.deployment import RecommenderService

        serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
        app = RecommenderService.options(
            **replica_options(cfg), max_ongoing_requests=cfg.serve.max_ongoing_requests,
            logging_config={"enable_access_log": cfg.serve.access_log},
            user_config={"batch_wait_timeout_s": batch_wait_ms / 1000.0},
        ).bind(cfg.model_dump())
        serve.run(app, name=APP_NAME, route_prefix=cfg.serve.route_prefix)
    print("READY", flush=True)
    sys.stdin.read()  # the parent closes our stdin when its load is done
    stop_serving(cfg)
    ray.shutdown()


# ------------------------------------------------------------------ the load generator


@dataclass
class Cell:
    """One measurement: a load shape against one server mode."""

    mode: str
    load: str  # "closed" or "open"
    concurrency: int | None
    rate: float | None
    duration_s: float
    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    rps: float = 0.0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    error_samples: list[str] = field(default_factory=list)


def _summarise(cell: Cell, latencies: list[float], elapsed: float) -> Cell:
    cell.requests = len(latencies)
    cell.rps = round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0
    if latencies:
        ms = np.asarray(latencies) * 1000
        cell.p50_ms, cell.p90_ms, cell.p99_ms = (round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99))
        cell.max_ms = round(float(ms.max()), 2)
    return cell


class Outcome:
    """Per-cell tallies shared by the client tasks (one event loop: no locks)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.fallbacks = 0
        self.samples: list[str] = []

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.samples) < 3:
            self.samples.append(what[:200])


async def _one(session, url: str, users: list[str], rng: random.Random, started: float, out: Outcome | None):
    try:
        async with session.get(f"{url}/recommendations/{rng.choice(users)}?k={K}") as resp:
            body = await resp.read()
            ok = resp.status == 200
    except Exception as err:  # a refused or reset connection is an error of the server under test
        if out is not None:
            out.error(f"{type(err).__name__}: {err}")
        return
    if out is None:
        return
    if not ok:
        out.error(f"HTTP {resp.status}: {body[:120]!r}")
        return
    out.latencies.append(time.perf_counter() - started)
    if b'"fallback":true' in body:  # a cheaper popularity answer: counted, so the table cannot flatter
        out.fallbacks += 1


def _client(api_key: str, limit: int):
    import aiohttp

    connector = aiohttp.TCPConnector(limit=limit, force_close=False, enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=connector, headers={"X-API-Key": api_key},
                                 timeout=aiohttp.ClientTimeout(total=60))


async def closed_loop(urls: list[str], api_key: str, users: list[str], concurrency: int, duration: float,
                      warmup: float, mode: str) -> Cell:
    """``concurrency`` clients, each sending its next request when the last is answered."""
    out = Outcome()
    cell = Cell(mode, "closed", concurrency, None, duration)
    async with _client(api_key, concurrency) as session:
        t_start = time.perf_counter()
        t_measure, t_end = t_start + warmup, t_start + warmup + duration

        async def worker(n: int) -> None:
            rng, url = random.Random(n), urls[n % len(urls)]
            while (now := time.perf_counter()) < t_end:
                await _one(session, url, users, rng, now, out if now >= t_measure else None)

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    cell.errors, cell.fallbacks, cell.error_samples = out.errors, out.fallbacks, out.samples
    return _summarise(cell, out.latencies, duration)


async def open_loop(urls: list[str], api_key: str, users: list[str], rate: float, duration: float,
                    warmup: float, mode: str) -> Cell:
    """Requests sent on a fixed schedule of ``rate``/s whatever the answers; latency from the scheduled time."""
    out = Outcome()
    cell = Cell(mode, "open", None, rate, duration)
    async with _client(api_key, 512) as session:
        rng, tasks = random.Random(0), []
        t0 = time.perf_counter()
        total = int((warmup + duration) * rate)
        for n in range(total):
            scheduled = t0 + n / rate
            if (delay := scheduled - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            measured = out if n >= warmup * rate else None
            tasks.append(asyncio.create_task(_one(session, urls[n % len(urls)], users, rng, scheduled, measured)))
        await asyncio.gather(*tasks)
    cell.errors, cell.fallbacks, cell.error_samples = out.errors, out.fallbacks, out.samples
    return _summarise(cell, out.latencies, duration)


async def bare_handler(cfg: AppConfig, users: list[str], n: int) -> dict[str, float]:
    """Latency of ``service.recommend`` called directly (no HTTP, no gateway), one at a time."""
    service = await local_service(cfg)
    rng = random.Random(1)
    for _ in range(20):  # warm torch and the thread pool
        await service.recommend(rng.choice(users), K)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await service.recommend(rng.choice(users), K)
        times.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1000
    return {"calls": n, "p50_ms": round(float(np.median(ms)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


# ------------------------------------------------------------------ orchestration


def free_port_block(span: int = 1) -> int:
    """A port ``p`` such that ``p .. p + span - 1`` are free now."""
    for _ in range(200):
        with closing(socket.socket()) as sock:
            sock.bind(("127.0.0.1", 0))
            base = sock.getsockname()[1]
        if base + span > 65000:
            continue
        try:
            for p in range(base, base + span):
                with closing(socket.socket()) as probe:
                    probe.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no block of {span} free ports found")


def wait_healthy(ports: list[int], timeout: float, proc: subprocess.Popen) -> list[str]:
    """Base URLs among ``ports`` whose ``/healthz`` answers ok (polls until one does, or raise)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server process exited with code {proc.returncode} before it was healthy")
        found = []
        for port in ports:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json().get("status") == "ok":
                    found.append(f"http://127.0.0.1:{port}")
            except Exception:
                pass
        if found:
            return found
        time.sleep(0.5)
    raise RuntimeError(f"no healthy server on ports {ports[0]}..{ports[-1]} after {timeout:.0f} s")


def stop_process(proc: subprocess.Popen, graceful: bool, timeout: float = 90) -> None:
    """Close the child's stdin (Serve: shut down cleanly) or SIGTERM it; kill its process group if it hangs."""
    try:
        if graceful and proc.stdin:
            proc.stdin.close()
        else:
            proc.terminate()
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # our own child's session (start_new_session=True)
        proc.wait(timeout=10)


def measure_mode(mode: str, args: argparse.Namespace, workdir: Path, api_key: str, users: list[str],
                 log_dir: Path) -> dict[str, Any]:
    """Start ``mode``'s server in a child process, run every load cell against it, stop it."""
    kind, _, rest = mode.partition(":")
    mor, _, wait_ms = rest.partition(":")
    max_ongoing = int(mor or 64)
    port = free_port_block()
    direct_base = free_port_block(DIRECT_PORT_SPAN)
    env = {**os.environ, **QUIET, **SERVE_ENV.get(kind, {}),
           "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(direct_base),
           "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(direct_base + DIRECT_PORT_SPAN),
           "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}  # the benchmark has no traffic to drain
    cmd = [sys.executable, str(Path(__file__).resolve()), "--role", "uvicorn" if kind == "uvicorn" else "serve",
           "--workdir", str(workdir), "--port", str(port), "--max-ongoing", str(max_ongoing)]
    if wait_ms:
        cmd += ["--batch-wait-ms", wait_ms]
    log_path = log_dir / f"{mode.replace(':', '-')}.log"
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=REPO, start_new_session=True)
        try:
            ports = list(range(direct_base, direct_base + DIRECT_PORT_SPAN)) if kind == "direct" else [port]
            urls = wait_healthy(ports, args.start_timeout, proc)
            started_s = time.monotonic() - t0
            loadavg = [round(x, 2) for x in os.getloadavg()]
            print(f"[{mode}] up in {started_s:.0f} s at {', '.join(urls)}", flush=True)
            cells = []
            for c in args.concurrency:
                cell = asyncio.run(closed_loop(urls, api_key, users, c, args.duration, args.warmup, mode))
                print(f"[{mode}] closed c={c:<3} {cell.rps:8.1f} rps  p50 {cell.p50_ms} ms  p99 {cell.p99_ms} ms"
                      f"  errors {cell.errors}  fallbacks {cell.fallbacks}", flush=True)
                cells.append(asdict(cell))
            cell = asyncio.run(open_loop(urls, api_key, users, args.rate, args.duration, args.warmup, mode))
            print(f"[{mode}] open {args.rate:.0f}/s  {cell.rps:8.1f} rps  p50 {cell.p50_ms} ms  p99 {cell.p99_ms} ms"
                  f"  errors {cell.errors}", flush=True)
            cells.append(asdict(cell))
        finally:
            stop_process(proc, graceful=kind != "uvicorn")
    return {"mode": mode, "kind": kind, "max_ongoing_requests": None if kind == "uvicorn" else max_ongoing,
            "batch_wait_ms": float(wait_ms) if wait_ms else (None if kind == "uvicorn" else "deployment default"),
            "urls": urls, "startup_s": round(started_s, 1), "loadavg_at_start": loadavg, "env": SERVE_ENV.get(kind, {}), "cells": cells}


def ratios(modes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per Serve mode and closed-loop concurrency: requests/s and p50 relative to uvicorn's."""
    base = next((m for m in modes if m["kind"] == "uvicorn"), None)
    if base is None:
        return {}
    ref = {c["concurrency"]: c for c in base["cells"] if c["load"] == "closed"}
    out = {}
    for m in modes:
        if m["kind"] == "uvicorn":
            continue
        out[m["mode"]] = {
            str(c["concurrency"]): {
                "rps_ratio": round(c["rps"] / ref[c["concurrency"]]["rps"], 3) if ref[c["concurrency"]]["rps"] else None,
                "p50_ratio": round(c["p50_ms"] / ref[c["concurrency"]]["p50_ms"], 2)
                if c["p50_ms"] and ref[c["concurrency"]]["p50_ms"] else None,
            }
            for c in m["cells"] if c["load"] == "closed" and c["concurrency"] in ref
        }
    return out


def table(result: dict[str, Any]) -> str:
    """The printed summary: one row per mode and load, with ratios to uvicorn and overhead over the handler."""
    bare = result["bare_handler"]["p50_ms"]
    lines = [f"{'mode':<12}{'load':<10}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'fallbk':>8}"
             f"{'x uvicorn':>11}{'p50-bare':>10}", "-" * 86]
    ratio = result["ratios"]
    for m in result["modes"]:
        for c in m["cells"]:
            load = f"c={c['concurrency']}" if c["load"] == "closed" else f"{c['rate']:.0f}/s"
            r = ratio.get(m["mode"], {}).get(str(c["concurrency"]), {}).get("rps_ratio") if c["load"] == "closed" else None
            over = f"{c['p50_ms'] - bare:.2f}" if c["p50_ms"] is not None and c["concurrency"] == 1 else ""
            lines.append(f"{m['mode']:<12}{load:<10}{c['rps']:>9.1f}{_f(c['p50_ms']):>9}{_f(c['p99_ms']):>9}"
                         f"{c['errors']:>8}{c['fallbacks']:>8}{'' if r is None else f'{r:.2f}':>11}{over:>10}")
    lines.append(f"bare handler (service.recommend, no HTTP): p50 {bare} ms, p99 {result['bare_handler']['p99_ms']} ms")
    lines.append(f"load average before/after: {result['loadavg_before']} / {result['loadavg_after']} "
                 f"on {result['machine']['cpus']} CPUs")
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def plot(result: dict[str, Any], path: Path) -> Path | None:
    """Requests/s and p99 per mode and concurrency, as a PNG (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    modes = [m for m in result["modes"] if "error" not in m]
    conc = result["settings"]["concurrency"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(modes))
    for n, m in enumerate(modes):
        closed = {c["concurrency"]: c for c in m["cells"] if c["load"] == "closed"}
        xs = np.arange(len(conc)) + n * width
        axes[0].bar(xs, [closed[c]["rps"] for c in conc], width, label=m["mode"])
        axes[1].bar(xs, [closed[c]["p99_ms"] or 0 for c in conc], width, label=m["mode"])
    for ax, title in zip(axes, ("requests/s (closed loop)", "p99 latency, ms (log)")):
        ax.set_xticks(np.arange(len(conc)) + 0.4 - width / 2, [f"{c} clients" for c in conc])
        ax.set_title(title)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"GET /recommendations, SASRec 64-d x2 layers, {result['settings']['items']} items, "
                 f"load avg {result['loadavg_before'][0]:.1f} on 2 cores")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    """Prepare the model once, measure the bare handler, then every server mode in turn."""
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    workdir = Path(tempfile.mkdtemp(prefix="aisys-bench-serving-"))
    log_dir = workdir / "logs"
    log_dir.mkdir()
    try:
        cfg = bench_config(workdir, port=8000)  # the port is each server's own
        t = time.monotonic()
        version, api_key = prepare(cfg, args.users, args.items)
        print(f"registered SASRec v{version} ({args.items} items, {args.users} users) in {time.monotonic() - t:.0f} s",
              flush=True)
        users = [f"user{u}" for u in range(args.users)]
        bare = asyncio.run(bare_handler(cfg, users, args.bare_calls))
        print(f"bare handler: p50 {bare['p50_ms']} ms, p99 {bare['p99_ms']} ms", flush=True)
        loadavg_before = [round(x, 2) for x in os.getloadavg()]
        modes = []
        for mode in args.modes:
            try:
                modes.append(measure_mode(mode, args, workdir, api_key, users, log_dir))
            except Exception as err:  # one broken mode must not lose the others' numbers
                tail = (log_dir / f"{mode.replace(':', '-')}.log").read_text()[-2000:]
                print(f"[{mode}] FAILED: {err}\n{tail}", flush=True)
                modes.append({"mode": mode, "kind": mode.partition(":")[0], "error": str(err), "cells": []})
        measured = [m for m in modes if "error" not in m]
        result = {
            "benchmark": "benchmarks/serving.py",
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "settings": {"quick": args.quick, "items": args.items, "users": args.users, "k": K,
                         "concurrency": args.concurrency, "rate": args.rate, "duration_s": args.duration,
                         "warmup_s": args.warmup, "model": "SASRec 64-d, 2 layers, 2 heads, seq 50 (untrained)",
                         "replicas": 1, "cache": "off", "rate_limiter": "memory", "session_store": "memory",
                         "client": "aiohttp on uvloop, this process"},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "loadavg_before": loadavg_before,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "bare_handler": bare,
            "modes": modes,
            "ratios": ratios(measured),
        }
        print(table({**result, "modes": measured}))
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s cells, 1 s warm-up, fewer users")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help="comma-separated: uvicorn, proxy:N, direct:N, haproxy:N (N = max_ongoing_requests)")
    parser.add_argument("--concurrency", default="1,16,64", help="closed-loop client counts")
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each cell is measured")
    parser.add_argument("--items", type=int, default=2000, help="catalogue size")
    parser.add_argument("--users", type=int, default=1000, help="users with a 50-item history")
    parser.add_argument("--bare-calls", type=int, default=500)
    parser.add_argument("--start-timeout", type=float, default=180.0)
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON; default benchmarks/results/serving.json (serving_quick.json with --quick)")
    parser.add_argument("--no-plot", action="store_true")
    # Internal: the server side of one mode, started by the orchestrator.
    parser.add_argument("--role", choices=("bench", "uvicorn", "serve"), default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--max-ongoing", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--batch-wait-ms", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in args.modes:
        kind, _, rest = mode.partition(":")
        n, _, wait = rest.partition(":")
        if kind not in ("uvicorn", *SERVE_ENV) or (n and not n.isdigit()) or (wait and not _is_number(wait)):
            parser.error(f"--modes: unknown mode {mode!r}; use uvicorn, proxy:N, direct:N or haproxy:N "
                         "(optionally :W, the batch wait in ms)")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.out is None:
        args.out = RESULTS / ("serving_quick.json" if args.quick else "serving.json")
    if args.quick:
        args.duration, args.warmup, args.users, args.bare_calls = min(args.duration, 2.0), 1.0, 200, 200
    return args


def _is_number(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.role != "bench":
        cfg = bench_config(args.workdir, args.port, args.max_ongoing)
        if args.role == "uvicorn":
            run_uvicorn_server(cfg)
        else:
            run_serve_server(cfg, args.batch_wait_ms)
        return
    try:
        import uvloop

        uvloop.install()  # the client's own overhead, kept small: it shares the 2 cores with the server
    except ImportError:
        pass
    result = orchestrate(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not args.no_plot and (png := plot(result, args.out.with_suffix(".png"))):
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
