"""Serving benchmark: ``aisys serve`` as shipped against ``uvicorn --workers <cores>`` serving the same app.

Each *mode* is a server started in its own process tree; the load comes from ``python -m aisys.loadgen``
(aiohttp) in a process of its own; CPU seconds per process of the server's tree are read with psutil around
every cell:

- ``uvicorn``: ``uvicorn --workers <cores> --factory`` over the project's FastAPI app (``build_fastapi_app`` +
  the gateway + request metrics, an ``OnlineService`` per worker built as a replica builds one): what a user
  would run instead (see ``serving_servers.py``; the table header says what differs);
- ``shipped``: ``aisys serve`` (``python -m aisys.cli serve``) on configs/local.yaml with every default,
  changed only where ``serving_workload.RAISED_OUT_OF_THE_WAY`` says (response cache off, rate limit out of
  reach, a generous latency budget), all printed in the header;
- ``shipped-1-replica``: the same with one replica (``ONE_REPLICA``), what shipped before
  ``serve.num_replicas: auto`` (one replica per CPU);
- ``shipped-old-hops``: the same, with the request path of before issue 15 (both shared actors asked on every
  request: ``OLD_HOPS``), to show what the leases and the replica-local session copy moved;
- ``set:KEY=VALUE[;KEY=VALUE]``: the same with those settings (``set:serve.access_log=true``), one setting measured
  against the shipped row of the same run;
- ``env:NAME=VALUE[;NAME=VALUE]``: the same with those environment variables for ``aisys serve`` and the Ray it
  starts (``env:RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0``: a Ray setting measured before it is shipped);
- ``ingress=proxy|direct|haproxy``: the same ``aisys serve`` with ``--set serve.ingress=...`` (extra rows;
  the default ingress is the ``shipped`` row). ``direct`` is measured on ``serve.port``, the port a user has.

Per mode: ``GET /recommendations/{user}?k=10`` over the workspace's users, closed loop at 1/16/64 clients and
an open loop at 200 requests/s (latency from each request's scheduled time). Ratios to uvicorn come from the
same run. Also the *bare handler*: ``await service.recommend(user, 10)`` in this process, the floor the 1-client
median overhead is measured against. Results: ``benchmarks/results/serving.json``.

    python benchmarks/serving.py                         # the shipped champion (aisys data/ingest/train, cached)
    python benchmarks/serving.py --model synthetic       # an untrained SASRec (2,000 items, 1,000 users)
    python benchmarks/serving.py --workspace .aisys      # whatever that (trained) workspace's champion is
    python benchmarks/serving.py --quick                 # smoke run: 2 s cells
    python benchmarks/serving.py --modes uvicorn,shipped --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from serving_report import markdown, plot, ratios, table
from serving_servers import (CLIENT_LABEL, UVICORN_WORKER, CpuMeter, QUIET, REPO, busy_processes, cpu_per_request_ms,
                             free_port_block, start_aisys_serve, start_uvicorn, stop, wait_healthy)
from serving_workload import (K, RAISED_OUT_OF_THE_WAY, bare_handler, bench_key, bench_overrides, champion_description,
                              champion_users, register_synthetic_model, shipped_champion_workspace, write_config)

from aisys.config import AppConfig

RESULTS = REPO / "benchmarks" / "results"
INGRESSES = ("proxy", "direct", "haproxy")
# `aisys serve` with the default ingress but the request path of before issue 15: the shared limiter and session
# actors asked on every request (no leases, no replica-local session copy). Shows what those two changes moved.
OLD_HOPS = {"gateway.rate_limit_lease_max_tokens": 1, "online.session_sync_every_s": 0}
# `aisys serve` as it shipped before `serve.num_replicas: auto`: one replica, reserving one CPU.
ONE_REPLICA = {"serve.num_replicas": 1}
DIRECT_PORT_SPAN = 20


def set_mode_overrides(mode: str) -> dict[str, Any]:
    """``set:serve.access_log=true;serve.max_ongoing_requests=16`` -> the overrides (values parsed as ``--set``)."""
    import yaml

    pairs = [p for p in mode.removeprefix("set:").split(";") if p]
    if not pairs or not all("=" in p for p in pairs):
        raise ValueError(f"mode {mode!r}: use set:section.key=value[;section.key=value...]")
    return {key: yaml.safe_load(value) for key, value in (p.split("=", 1) for p in pairs)}


def env_mode_variables(mode: str) -> dict[str, str]:
    """``env:RAY_SERVE_X=0;RAY_SERVE_Y=1`` -> the environment ``aisys serve`` (and the Ray it starts) gets."""
    pairs = [p for p in mode.removeprefix("env:").split(";") if p]
    if not pairs or not all("=" in p for p in pairs):
        raise ValueError(f"mode {mode!r}: use env:NAME=value[;NAME=value...]")
    return dict(p.split("=", 1) for p in pairs)


def file_stem(mode: str) -> str:
    """A file name for ``mode``'s config and log."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in mode)


def default_modes() -> list[str]:
    """uvicorn, what ships, then each other ingress as an extra row."""
    shipped = AppConfig().serve.ingress
    return ["uvicorn", "shipped", "shipped-1-replica", "shipped-old-hops",
            *(f"ingress={i}" for i in INGRESSES if i != shipped)]


def run_load(urls: list[str], paths_file: Path, api_key: str, args: argparse.Namespace, *,
             concurrency: int | None = None, rate: float | None = None) -> dict[str, Any]:
    """One cell from ``python -m aisys.loadgen`` in its own process; its JSON line back."""
    cmd = [sys.executable, "-m", "aisys.loadgen", "--paths-file", str(paths_file), "--header",
           f"X-API-Key: {api_key}", "--duration", str(args.duration), "--warmup", str(args.warmup)]
    for url in urls:
        cmd += ["--url", url]
    cmd += ["--concurrency", str(concurrency)] if concurrency is not None else ["--rate", str(rate)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **QUIET},
                          timeout=args.duration + args.warmup + 120)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_mode(mode: str, args: argparse.Namespace, workdir: Path, api_key: str, paths_file: Path,
                 probe: str) -> dict[str, Any]:
    """Start ``mode``'s server, run every cell against it with CPU sampled around each, stop it."""
    port = free_port_block()
    config_path = workdir / f"config-{file_stem(mode)}.yaml"
    log_path = workdir / "logs" / f"{file_stem(mode)}.log"
    extra = {"serve.ingress": mode.split("=", 1)[1]} if mode.startswith("ingress=") else {}
    if mode == "shipped-old-hops":
        extra = dict(OLD_HOPS)
    if mode == "shipped-1-replica":
        extra = dict(ONE_REPLICA)
    if mode.startswith("set:"):
        extra = set_mode_overrides(mode)
    cfg = write_config(config_path, bench_overrides(workdir, port, extra), base=args.base_config)
    t0 = time.monotonic()
    if mode == "uvicorn":
        proc = start_uvicorn(config_path, port, args.workers, log_path)
        sig = signal.SIGTERM
    else:
        direct = free_port_block(DIRECT_PORT_SPAN)
        proc = start_aisys_serve(config_path, log_path, {
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(direct),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(direct + DIRECT_PORT_SPAN),
            **(env_mode_variables(mode) if mode.startswith("env:") else {})})
        sig = signal.SIGINT  # Ctrl-C, as a terminal sends it
    try:
        urls = wait_healthy([f"http://127.0.0.1:{port}"], args.start_timeout, proc, api_key, probe)
        started_s = round(time.monotonic() - t0, 1)
        print(f"[{mode}] up in {started_s:.0f} s" + ("" if mode == "uvicorn" else f" (ingress {cfg.serve.ingress})"),
              flush=True)
        meter, cells = CpuMeter(proc.pid), []
        shapes = [{"concurrency": c} for c in args.concurrency] + [{"rate": args.rate}]
        for shape in shapes:
            before = meter.sample()
            cell = run_load(urls, paths_file, api_key, args, **shape)
            after = meter.sample()
            spent = CpuMeter.per_label(before, after)
            if mode == "uvicorn":
                cell["uvicorn_workers_busy"] = busy_processes(before, after, UVICORN_WORKER)
            spent[CLIENT_LABEL] = cell.pop("client_cpu_s", 0.0)
            cell["cpu_s"] = spent
            cell["cpu_ms_per_request"] = cpu_per_request_ms(spent, cell["answered_total"])
            cells.append(cell)
            load = f"c={shape['concurrency']}" if "concurrency" in shape else f"{args.rate:g}/s"
            print(f"[{mode}] {load:<7} {cell['rps']:8.1f} rps  p50 {cell['p50_ms']} ms  p99 {cell['p99_ms']} ms  "
                  f"errors {cell['errors']}  cpu {cell['cpu_ms_per_request'].get('total')} ms/req", flush=True)
        idle = None
        if args.idle > 0:  # CPU with no request at all, after the cells: Ray's background work (uvicorn: none)
            before = meter.sample()
            time.sleep(args.idle)
            spent = CpuMeter.per_label(before, meter.sample())
            idle = {"seconds": args.idle, "total_ms_per_s": round(sum(spent.values()) * 1000 / args.idle, 1),
                    **{label: round(cpu * 1000 / args.idle, 1) for label, cpu in spent.items()}}
            print(f"[{mode}] idle: {idle['total_ms_per_s']} ms of CPU per second", flush=True)
    finally:
        stop(proc, sig)
    return {"mode": mode, "kind": "uvicorn" if mode == "uvicorn" else ("shipped" if mode == "shipped" else "extra"),
            "ingress": None if mode == "uvicorn" else cfg.serve.ingress, "startup_s": started_s, "idle_cpu": idle,
            "cells": cells}


def prepare_workspace(args: argparse.Namespace, workdir: Path) -> tuple[AppConfig, list[str], str]:
    """The workspace the servers serve, always a copy: of ``--workspace``; of the shipped champion (trained by
    ``aisys data/ingest/train`` on the shipped config, cached between runs); or, with ``--model synthetic``, a
    workspace with a registered untrained SASRec over synthetic users."""
    cfg = write_config(workdir / "config-prepare.yaml", bench_overrides(workdir, 8000), base=args.base_config)
    if args.model == "synthetic":
        version, users = register_synthetic_model(cfg, args.users, args.items)
        return cfg, users, (f"synthetic SASRec 64-d, 2 layers, 2 heads, seq 50, {args.items} items "
                            f"(untrained, v{version}; --model synthetic)")
    if args.workspace:
        source, origin = args.workspace, f"the champion of {args.workspace}"
    else:
        source, key = shipped_champion_workspace(args.base_config, REPO, retrain=args.retrain)
        origin = f"shipped: `aisys data && aisys ingest && aisys train` on the shipped config, cache key {key}"
    shutil.copytree(source, cfg.paths.workspace, symlinks=True)
    users = champion_users(cfg)
    return cfg, users, f"{champion_description(cfg)} [{origin}]"


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    workdir = Path(tempfile.mkdtemp(prefix="aisys-bench-serving-"))
    (workdir / "logs").mkdir()
    try:
        t = time.monotonic()
        cfg, users, model = prepare_workspace(args, workdir)
        api_key = bench_key(cfg)
        paths_file = workdir / "paths.txt"
        paths_file.write_text("".join(f"/recommendations/{u}?k={K}\n" for u in users))
        print(f"workspace ready in {time.monotonic() - t:.0f} s: {model}, {len(users)} users", flush=True)
        bare = asyncio.run(bare_handler(cfg, users, args.bare_calls))
        print(f"bare handler: p50 {bare['p50_ms']} ms, p99 {bare['p99_ms']} ms", flush=True)
        loadavg_before = [round(x, 2) for x in os.getloadavg()]
        modes = []
        for mode in args.modes:
            try:
                modes.append(measure_mode(mode, args, workdir, api_key, paths_file, f"/recommendations/{users[0]}?k={K}"))
            except Exception as err:  # one broken mode must not lose the others' numbers
                log = workdir / "logs" / f"{file_stem(mode)}.log"
                print(f"[{mode}] FAILED: {err}\n{log.read_text()[-2000:] if log.exists() else ''}", flush=True)
                modes.append({"mode": mode, "kind": "shipped" if mode == "shipped" else mode, "error": str(err)})
        result = {
            "benchmark": "benchmarks/serving.py",
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python benchmarks/serving.py", *sys.argv[1:]]),
            "settings": {"k": K, "users": len(users), "model": model, "concurrency": args.concurrency,
                         "rate": args.rate, "duration_s": args.duration, "warmup_s": args.warmup,
                         "uvicorn_workers": args.workers, "default_ingress": AppConfig().serve.ingress,
                         "changed": ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in RAISED_OUT_OF_THE_WAY.items()) + " (and a bench API key "
                                              "with the same limit)"},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "node": platform.node()},
            "loadavg_before": loadavg_before,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "bare_handler": bare,
            "modes": modes,
        }
        result["ratios"] = ratios([m for m in modes if m.get("cells")])
        print(table(result))
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s cells, 1 s warm-up, 200 users")
    parser.add_argument("--modes", default=None,
                        help="comma-separated among uvicorn, shipped, shipped-1-replica (one replica, as shipped "
                        "before serve.num_replicas: auto), shipped-old-hops (the default ingress with "
                        "every request asking the limiter and session actors), ingress=proxy|direct|haproxy, "
                        "set:KEY=VALUE[;KEY=VALUE] (the shipped server with those --set values), "
                        "env:NAME=VALUE[;NAME=VALUE] (the shipped server with those environment variables, "
                        "which the Ray it starts inherits) "
                        f"(default: {','.join(default_modes())})")
    parser.add_argument("--model", choices=("shipped", "synthetic"), default="shipped",
                        help="shipped (default): the champion `aisys data && aisys ingest && aisys train` gives on "
                        "the shipped config (the default model.kind), trained once and cached under "
                        "$AISYS_BENCH_CACHE (~/.cache/aisys-bench) by a hash of the training config and code; "
                        "synthetic: an untrained 64-d SASRec over --users synthetic users and --items items")
    parser.add_argument("--retrain", action="store_true", help="train the shipped champion anew (ignore the cache)")
    parser.add_argument("--workspace", type=Path, default=None,
                        help="serve a copy of this trained workspace's champion instead of the shipped one")
    parser.add_argument("--base-config", type=Path, default=None,
                        help="the config `aisys serve` would read (default configs/local.yaml)")
    parser.add_argument("--concurrency", default="1,16,64", help="closed-loop client counts")
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each cell is measured")
    parser.add_argument("--idle", type=float, default=5.0,
                        help="seconds of no load per server, to measure its background CPU (0: skip)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="uvicorn workers (one per core)")
    parser.add_argument("--items", type=int, default=2000, help="--model synthetic: catalogue size")
    parser.add_argument("--users", type=int, default=1000, help="--model synthetic: users with a 50-item history")
    parser.add_argument("--bare-calls", type=int, default=500)
    parser.add_argument("--start-timeout", type=float, default=240.0)
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON; default benchmarks/results/serving.json (serving_quick.json with --quick)")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in (args.modes or ",".join(default_modes())).split(",") if m.strip()]
    allowed = {"uvicorn", "shipped", "shipped-1-replica", "shipped-old-hops", *(f"ingress={i}" for i in INGRESSES)}
    for mode in args.modes:
        if mode not in allowed and not mode.startswith(("set:", "env:")):
            parser.error(f"--modes: unknown mode {mode!r}; use {', '.join(sorted(allowed))}")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.workspace is not None and not (args.workspace / "mlflow.db").exists():
        parser.error(f"--workspace {args.workspace}: no mlflow.db in it; train one first (`aisys train`)")
    if args.out is None:
        args.out = RESULTS / ("serving_quick.json" if args.quick else "serving.json")
    if args.quick:
        args.duration, args.warmup, args.users, args.bare_calls = min(args.duration, 2.0), 1.0, 200, 200
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = orchestrate(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result) + "\n")  # the table for docs/serving.md
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out}, {args.out.with_suffix('.md')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
