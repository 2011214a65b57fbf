"""How many torch threads a serving replica should use: scoring latency at 1, 2 (and more) threads, same run.

The replica's scoring call (`Recommender.recommend_many`) is timed for a single request and for a batch of 32,
with the serving model's dimensions (64-d, 2 layers, windows of 50) over a 2,000-item catalogue. Prints the
median and p99 per setting and the ratio against 1 thread. On a 2-core machine the replica shares the cores
with the HTTP layer and other replicas, so the 1-thread default stands unless more threads are clearly faster.

    python benchmarks/torch_threads.py [--threads 1,2] [--calls 300]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from aisys.models.bundle import ModelBundle
from aisys.models.sasrec import SASRec, SASRecConfig, cpu_state_dict
from aisys.serving.recommender import Recommender, ScoreRequest
from aisys.serving.session_store import UserSession

N_ITEMS, LENGTH, DIM = 2000, 50, 64


def make_recommender(threads: int) -> Recommender:
    torch.manual_seed(0)
    config = SASRecConfig(n_items=N_ITEMS, max_seq_len=LENGTH, embedding_dim=DIM, n_layers=2, n_heads=2)
    item_ids = [""] + [f"item{i:05d}" for i in range(N_ITEMS)]
    bundle = ModelBundle("sasrec", config.to_dict(), item_ids, [0.0] + [1.0] * N_ITEMS,
                         cpu_state_dict(SASRec(config)), [None] + [f"c{i % 20}" for i in range(N_ITEMS)],
                         max_seq_len=LENGTH)
    return Recommender(bundle, torch_threads=threads, retrieval="exact")


def time_calls(rec: Recommender, batch: int, calls: int, rng: np.random.Generator) -> list[float]:
    item_ids = rec.bundle.item_ids[1:] if hasattr(rec, "bundle") else [f"item{i:05d}" for i in range(N_ITEMS)]
    out = []
    for _ in range(calls):
        requests = [ScoreRequest(UserSession(items=tuple(rng.choice(item_ids, LENGTH))), 10) for _ in range(batch)]
        started = time.perf_counter()
        rec.recommend_many(requests)
        out.append((time.perf_counter() - started) * 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--out", default="benchmarks/results/torch_threads.json")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for batch in (1, 32):
        base = None
        for threads in [int(t) for t in args.threads.split(",")]:
            rec = make_recommender(threads)
            torch.set_num_threads(threads)
            time_calls(rec, batch, 20, rng)  # warm-up
            ms = time_calls(rec, batch, args.calls if batch == 1 else max(30, args.calls // 5), rng)
            p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
            base = base or p50
            rows.append({"batch": batch, "threads": threads, "p50_ms": p50, "p99_ms": p99, "x_vs_1": base / p50})
            print(f"batch {batch:>2}  threads {threads}  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
                  f"speed vs 1 thread {base / p50:5.2f}x")
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "loadavg": load, "cpus": os.cpu_count()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
