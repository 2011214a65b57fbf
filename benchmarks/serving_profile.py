"""Where the shipped ``aisys serve``'s time goes under load: py-spy on its Serve replica while clients hammer it.

Starts ``aisys serve`` exactly as ``benchmarks/serving.py``'s ``shipped`` mode does (same workspace: the shipped
champion by default, same overrides), drives ``GET /recommendations/{user}?k=10`` from ``python -m aisys.loadgen`` at
``--concurrency`` clients, and meanwhile samples the replica process with ``py-spy record --nonblocking``
(busy threads only). Prints the functions with the most samples on top of the stack (self) and anywhere in it
(inclusive), and the CPU each process of the server's tree spent, and writes them to
``benchmarks/results/serving_profile_c<N>.txt`` (the raw stacks beside it, for a flame graph).

    python benchmarks/serving_profile.py                  # 64 clients, 15 s
    python benchmarks/serving_profile.py --concurrency 16 --modes ingress=proxy
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serving import DIRECT_PORT_SPAN, ONE_REPLICA, RESULTS, prepare_workspace, run_load, set_mode_overrides
from serving_servers import QUIET, CpuMeter, free_port_block, start_aisys_serve, stop, wait_healthy
from serving_workload import K, bench_key, bench_overrides, write_config

PY_SPY = Path(sys.executable).with_name("py-spy")


def replica_pids(root_pid: int) -> list[int]:
    """The Serve replicas under ``root_pid`` (their process titles start ``ray::ServeReplica``)."""
    import psutil

    out = []
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            if proc.cmdline() and proc.cmdline()[0].startswith("ray::ServeReplica"):
                out.append(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return out


def summarise(raw: str, top: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """Samples in py-spy's raw output (``frame;frame;... count`` per line), and the top self / inclusive frames."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if frames:
            self_counts[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return total, self_counts.most_common(top), inclusive.most_common(top)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds sampled (load runs 3 s longer)")
    parser.add_argument("--mode", default="shipped",
                        help="shipped, shipped-1-replica, ingress=proxy|direct|haproxy, or set:KEY=VALUE[;KEY=VALUE]")
    parser.add_argument("--base-config", type=Path, default=None,
                        help="the config `aisys serve` would read (default configs/local.yaml)")
    parser.add_argument("--model", choices=("shipped", "synthetic"), default="shipped",
                        help="the served model, as benchmarks/serving.py's --model (default: the shipped champion)")
    parser.add_argument("--workspace", type=Path, default=None, help="serve a copy of this workspace's champion")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    if not PY_SPY.exists():
        parser.error(f"py-spy not found at {PY_SPY}: install the dev extras (pip install -e '.[dev]')")
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    workdir = Path(tempfile.mkdtemp(prefix="aisys-bench-profile-"))
    (workdir / "logs").mkdir()
    setup = argparse.Namespace(workspace=args.workspace, base_config=args.base_config, model=args.model,
                               retrain=False, users=1000, items=2000, duration=args.duration + 3, warmup=2.0)
    proc = None
    try:
        cfg, users, model = prepare_workspace(setup, workdir)
        api_key = bench_key(cfg)
        paths_file = workdir / "paths.txt"
        paths_file.write_text("".join(f"/recommendations/{u}?k={K}\n" for u in users))
        port = free_port_block()
        extra = {"serve.ingress": args.mode.split("=", 1)[1]} if args.mode.startswith("ingress=") else {}
        if args.mode == "shipped-1-replica":
            extra = dict(ONE_REPLICA)
        if args.mode.startswith("set:"):
            extra = set_mode_overrides(args.mode)
        config_path = workdir / "config.yaml"
        write_config(config_path, bench_overrides(workdir, port, extra), base=args.base_config)
        direct = free_port_block(DIRECT_PORT_SPAN)
        proc = start_aisys_serve(config_path, workdir / "logs" / "serve.log", {
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(direct),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(direct + DIRECT_PORT_SPAN)})
        urls = wait_healthy([f"http://127.0.0.1:{port}"], 240, proc, api_key, f"/recommendations/{users[0]}?k={K}")
        replicas = replica_pids(proc.pid)
        if not replicas:
            raise RuntimeError("no ray::ServeReplica process found under `aisys serve`")
        raw_path = RESULTS / f"serving_profile_c{args.concurrency}.raw"
        RESULTS.mkdir(parents=True, exist_ok=True)
        meter = CpuMeter(proc.pid)
        # py-spy starts after the load's warm-up and stops before the load ends.
        spy_cmd = [str(PY_SPY), "record", "--nonblocking", "-r", str(args.rate), "-d", str(int(args.duration)),
                   "-f", "raw", "-o", str(raw_path), "-p", str(replicas[0])]
        before = meter.sample()
        with ThreadPoolExecutor(1) as pool:
            cell = pool.submit(run_load, urls, paths_file, api_key, setup, concurrency=args.concurrency)
            time.sleep(setup.warmup + 1)
            spy = subprocess.run(spy_cmd, capture_output=True, text=True)
            result = cell.result()
        spent = CpuMeter.per_label(before, meter.sample())
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {spy.stderr[-500:]}")
        total, top_self, top_incl = summarise(raw_path.read_text(), args.top)
        lines = [f"{args.mode} ({model}), {args.concurrency} clients: {result['rps']:.1f} rps, p50 {result['p50_ms']} "
                 f"ms, p99 {result['p99_ms']} ms; replica pid {replicas[0]} of {len(replicas)}; {total} busy samples "
                 f"at {args.rate}/s over {int(args.duration)} s; load average {[round(x, 2) for x in os.getloadavg()]}",
                 "", "CPU s per process over the cell: " + ", ".join(f"{k} {v:.2f}" for k, v in spent.items()),
                 "", "self (top of stack):"]
        lines += [f"  {100 * n / max(total, 1):5.1f}%  {frame}" for frame, n in top_self]
        lines += ["", "inclusive:"] + [f"  {100 * n / max(total, 1):5.1f}%  {frame}" for frame, n in top_incl]
        text = "\n".join(lines)
        print(text)
        out = raw_path.with_suffix(".txt")
        out.write_text(text + "\n")
        print(f"wrote {out} and {raw_path}")
    finally:
        if proc is not None:
            stop(proc, signal.SIGINT)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
