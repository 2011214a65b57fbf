"""Retrieval benchmark: exact top-k against Faiss ANN over a synthetic catalogue, in one run.

The catalogue is a Gaussian mixture, not uniform noise: ``--clusters`` unit-norm
centres ("categories") with Zipf-like sizes, items spread around their centre, and
item norms drawn log-normal (trained embeddings give popular items larger norms,
which is what makes inner-product search harder than cosine). Queries are random
items' directions plus noise ("a user near something they viewed").

For the exact index and each ANN kind it measures, with ``--threads`` (1 by
default: the 2-core box is shared) for torch and Faiss:

- build time, and memory: the RSS growth of this process during the build and the
  serialised size of the Faiss index (the exact index holds the item matrix);
- latency of one query (batch 1): median and p99 over ``--queries`` queries;
- latency of a batch of ``--batch`` queries: median and p99 per batch;
- recall@k against the exact top-k of the same queries;
- the ratios: exact median / ANN median (speed-up) at batch 1 and batch B.

Each ANN kind is measured at several search settings (``nprobe`` / ``efSearch``),
so the table shows the recall/latency trade-off the default was chosen from, and
names the fastest setting of each kind reaching ``--target`` recall. A last row
repeats that IVF-Flat setting with ``--exclude`` items excluded per query (taken from each query's exact top 2k: a user's history sits near the
user), against exact with the same exclusions, and counts exact fallbacks.

At 10M items the run is memory-conscious: the catalogue is generated in float32 chunks into one
preallocated matrix (no float64 or full-size temporaries), the exact index references that matrix, each ANN
index is built, measured and freed before the next, and index sizes are computed from the Faiss structures
instead of serialising a multi-GiB copy. ``--build-threads`` lets k-means and ``add`` use more cores than the
search latencies are measured with. Results (rows, settings, peak RSS, load average) go to
``benchmarks/results/retrieval_<items>.json``.

    python benchmarks/retrieval.py                       # 1M x 64, all kinds
    python benchmarks/retrieval.py --items 100000 --kinds exact,ivf_flat
    python benchmarks/retrieval.py --items 10000000 --kinds ivf_flat,ivf_pq --k 10 --batch 64 --queries 192 \
        --build-threads 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil

from aisys.retrieval import ExactIndex, FaissIndex, ItemIndex, make_index

RESULTS = Path(__file__).resolve().parent / "results"
GENERATE_CHUNK = 1_000_000  # rows generated at a time: bounds the temporaries to ~256 MiB at 64 dimensions

# Search settings measured per kind, cheapest first.
SWEEPS: dict[str, list[dict]] = {
    "ivf_flat": [{"nprobe": n} for n in (16, 32, 64, 128, 256)],
    "hnsw": [{"ef_search": e} for e in (128, 256, 512)],
    "ivf_pq": [{"nprobe": n, "refine_factor": r} for n, r in ((32, 4), (64, 4), (128, 4), (64, 8))],
}


def clustered_catalogue(
    n_items: int, dim: int, n_clusters: int, rng: np.random.Generator, spread: float = 0.6
) -> np.ndarray:
    """``(n_items, dim)`` float32 item vectors from a Gaussian mixture with Zipf-sized clusters
    and log-normal norms, generated :data:`GENERATE_CHUNK` rows at a time into one matrix."""
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = 1.0 / np.arange(1, n_clusters + 1) ** 0.8
    p = sizes / sizes.sum()
    items = np.empty((n_items, dim), dtype=np.float32)
    for start in range(0, n_items, GENERATE_CHUNK):
        block = items[start : start + GENERATE_CHUNK]  # a view: filled in place
        labels = rng.choice(n_clusters, size=block.shape[0], p=p)
        rng.standard_normal(block.shape, dtype=np.float32, out=block)
        block *= np.float32(spread / np.sqrt(dim))
        block += centres[labels]
        block *= rng.lognormal(0.0, 0.3, size=(block.shape[0], 1)).astype(np.float32)
    return items


def queries_near_items(items: np.ndarray, n: int, rng: np.random.Generator, noise: float = 0.5) -> np.ndarray:
    """``(n, dim)`` queries: the direction of a random item plus Gaussian noise."""
    picked = items[rng.choice(items.shape[0], size=n, replace=False)]
    picked = picked / np.linalg.norm(picked, axis=1, keepdims=True)
    dim = items.shape[1]
    return (picked + rng.standard_normal(picked.shape, dtype=np.float32) * np.float32(noise / np.sqrt(dim))).astype(
        np.float32
    )


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` (ids, -1 = padding) that ``found`` also holds."""
    hits = total = 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        hits += np.intersect1d(f[f >= 0], t).size
        total += t.size
    return hits / max(total, 1)


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def index_bytes(index: ItemIndex, items: np.ndarray) -> int:
    """Bytes the index holds: the item matrix for exact; for Faiss, the sum of its parts (see
    :func:`faiss_bytes`), which equals the serialised size to within headers without making that copy."""
    if isinstance(index, FaissIndex):
        return faiss_bytes(index.index)
    return int(items.nbytes)


def faiss_bytes(index) -> int:
    """Payload bytes of an IVF (Flat or PQ), refine-flat or flat Faiss index: codes, ids, centroids, codebooks."""
    import faiss

    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        return faiss_bytes(index.base_index) + faiss_bytes(index.refine_index)
    if isinstance(index, faiss.IndexFlatCodes):
        return int(index.ntotal * index.code_size)
    if isinstance(index, faiss.IndexIVF):
        lists = index.invlists
        stored = sum(lists.list_size(i) for i in range(index.nlist))
        total = stored * (index.code_size + 8) + faiss_bytes(index.quantizer)  # codes + int64 ids + centroids
        if isinstance(index, faiss.IndexIVFPQ):
            total += int(index.pq.M * index.pq.ksub * index.pq.dsub * 4)  # the PQ codebooks
        return int(total)
    return int(faiss.serialize_index(index).nbytes)  # other kinds (HNSW): small enough to copy


def timed_build(kind: str, items: np.ndarray, threads: int, seed: int,
                build_threads: int | None = None) -> tuple[ItemIndex, float, int]:
    """A built index (searching with ``threads``), its build seconds (with ``build_threads``) and the RSS
    growth of the process (bytes)."""
    before = _rss()
    start = time.perf_counter()
    if kind == "exact":
        index = make_index(kind, threads=threads)
    else:
        index = make_index(kind, threads=build_threads or threads, seed=seed)
    index.build(items)
    seconds = time.perf_counter() - start
    index.threads = threads  # search latencies are measured with --threads
    return index, seconds, _rss() - before


def peak_rss_mib() -> float:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def latencies(index: ItemIndex, queries: np.ndarray, k: int, batch: int,
              exclude: list[list[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Milliseconds per search call over ``queries`` split into batches of ``batch``, and the ids."""
    index.search(queries[:batch], k, None if exclude is None else exclude[:batch])  # warm caches
    times, ids = [], []
    for start in range(0, queries.shape[0] - batch + 1, batch):
        ex = None if exclude is None else exclude[start : start + batch]
        t0 = time.perf_counter_ns()
        _, found = index.search(queries[start : start + batch], k, ex)
        times.append((time.perf_counter_ns() - t0) / 1e6)
        ids.append(found)
    return np.asarray(times), np.concatenate(ids)


def _row(name, params, build_s, rss, size, lat1, latb, rec, exact1, exactb) -> dict:
    return {
        "index": name, "params": params, "build_s": build_s, "rss_mib": rss / 2**20, "index_mib": size / 2**20,
        "b1_p50": np.median(lat1), "b1_p99": np.percentile(lat1, 99),
        "bB_p50": np.median(latb), "bB_p99": np.percentile(latb, 99), "recall": rec,
        "speedup_b1": exact1 / np.median(lat1), "speedup_bB": exactb / np.median(latb),
    }


_SHORT = {"nlist": "nl", "nprobe": "np", "hnsw_m": "M", "ef_construction": "efC", "ef_search": "ef",
          "pq_m": "pq", "refine_factor": "rf", "excl": "excl"}


def _print_table(rows: list[dict], args: argparse.Namespace) -> None:
    head = (f"{'index':<10} {'params':<24} {'build s':>8} {'RSS MiB':>8} {'idx MiB':>8} "
            f"{'b1 p50':>7} {'b1 p99':>7} {f'b{args.batch} p50':>7} {f'b{args.batch} p99':>7} "
            f"{'recall':>7} {'x b1':>7} {f'x b{args.batch}':>7}")
    print(f"\ntop-{args.k} over {args.items:,} x {args.dim} items ({args.clusters} clusters), "
          f"{args.queries} queries, threads={args.threads}; latencies in ms per call; "
          f"x = exact p50 / this p50")
    print(head)
    print("-" * len(head))
    for r in rows:
        params = ",".join(f"{_SHORT.get(k, k)}={v}" for k, v in r["params"].items())
        print(f"{r['index']:<10} {params:<24} {r['build_s']:>8.1f} {r['rss_mib']:>8.0f} {r['index_mib']:>8.0f} "
              f"{r['b1_p50']:>7.2f} {r['b1_p99']:>7.2f} {r['bB_p50']:>7.2f} {r['bB_p99']:>7.2f} "
              f"{r['recall']:>7.3f} {r['speedup_b1']:>7.1f} {r['speedup_bB']:>7.1f}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=None, help="Mixture components (default items/1000).")
    parser.add_argument("--queries", type=int, default=320, help="Queries timed (a multiple of --batch).")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--kinds", default="ivf_flat,hnsw,ivf_pq", help="ANN kinds to compare with exact.")
    parser.add_argument("--exclude", type=int, default=50, help="Items excluded per query in the last row (0: skip).")
    parser.add_argument("--threads", type=int, default=1, help="torch and Faiss threads for searches.")
    parser.add_argument("--build-threads", type=int, default=None,
                        help="Faiss threads for k-means and add (default: --threads); searches keep --threads.")
    parser.add_argument("--target", type=float, default=0.95, help="Recall@k the chosen setting must reach.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default benchmarks/results/retrieval_<items>.json)")
    args = parser.parse_args(argv)
    args.clusters = args.clusters or max(8, args.items // 1000)
    kinds = [k for k in args.kinds.split(",") if k and k != "exact"]  # exact is always measured: it is the truth
    for kind in kinds:
        if kind not in SWEEPS:
            parser.error(f"--kinds: unknown kind {kind!r}; use {', '.join(SWEEPS)}")
    if args.queries < args.batch:
        parser.error(f"--queries ({args.queries}) must be at least --batch ({args.batch})")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(args.threads, args.build_threads or 1)))
    started, loadavg_before = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    items = clustered_catalogue(args.items, args.dim, args.clusters, rng)
    queries = queries_near_items(items, args.queries, rng)
    generate_s = time.perf_counter() - t0
    print(f"generated {args.items:,} x {args.dim} float32 items ({items.nbytes / 2**30:.2f} GiB) in "
          f"{generate_s:.1f} s", flush=True)

    exact, build_s, rss = timed_build("exact", items, args.threads, args.seed)
    exact1, truth = latencies(exact, queries, args.k, 1)
    exactb, _ = latencies(exact, queries, args.k, args.batch)
    e1, eb = float(np.median(exact1)), float(np.median(exactb))
    rows = [_row("exact", {}, build_s, rss, index_bytes(exact, items), exact1, exactb, 1.0, e1, eb)]
    _print_table(rows, args)

    default_row = None
    for kind in kinds:
        index, build_s, rss = timed_build(kind, items, args.threads, args.seed, args.build_threads)
        size = index_bytes(index, items)
        print(f"  built {kind} in {build_s:.1f} s: {size / 2**20:.0f} MiB, RSS +{rss / 2**20:.0f} MiB", flush=True)
        for setting in SWEEPS[kind]:
            for key, value in setting.items():
                setattr(index, key, value)
            lat1, found = latencies(index, queries, args.k, 1)
            latb, _ = latencies(index, queries, args.k, args.batch)
            rows.append(_row(kind, index.params(), build_s, rss, size, lat1, latb, recall(found, truth), e1, eb))
            rows[-1]["setting"] = setting
            print(f"  measured {kind} {index.params()}: recall {rows[-1]['recall']:.3f}, "
                  f"b1 p50 {rows[-1]['b1_p50']:.2f} ms", flush=True)
        if kind == "ivf_flat":
            default_row = _exclusion_row(index, exact, items, queries, args, _chosen(rows, kind, args.target))
        del index
        gc.collect()

    if default_row:
        rows.append(default_row)
    _print_table(rows, args)
    chosen = {}
    for kind in kinds:
        best = _chosen(rows, kind, args.target)
        chosen[kind] = best and best["params"]
        print(f"fastest {kind} with recall@{args.k} >= {args.target}: "
              + (f"{best['params']} ({best['b1_p50']:.2f} ms p50, recall {best['recall']:.3f}, "
                 f"build {best['build_s']:.1f} s)" if best else "none"))
    wall_s = time.perf_counter() - started
    print(f"peak RSS {peak_rss_mib():.0f} MiB; wall {wall_s:.0f} s; load average before/after "
          f"{loadavg_before} / {[round(x, 2) for x in os.getloadavg()]}")
    out = args.out or RESULTS / f"retrieval_{args.items}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "benchmarks/retrieval.py",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/retrieval.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {key: (str(v) if isinstance(v, Path) else v) for key, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count()},
        "generate_s": round(generate_s, 1), "wall_s": round(wall_s, 1), "peak_rss_mib": round(peak_rss_mib()),
        "loadavg_before": loadavg_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "chosen": chosen,
        "rows": [{key: (round(float(v), 4) if isinstance(v, (float, np.floating)) else v) for key, v in r.items()}
                 for r in rows],
    }, indent=2) + "\n")
    print(f"wrote {out}")
    return rows


def _chosen(rows: list[dict], kind: str, target: float) -> dict | None:
    """The row of ``kind`` with the lowest batch-1 median among those reaching ``target`` recall."""
    good = [r for r in rows if r["index"] == kind and r["recall"] >= target]
    return min(good, key=lambda r: r["b1_p50"]) if good else None


def _exclusion_row(index: FaissIndex, exact: ExactIndex, items, queries, args, chosen: dict | None) -> dict | None:
    """The chosen IVF-Flat setting (else the default) with ``--exclude`` near items excluded per query."""
    if not args.exclude:
        return None
    index.nprobe = chosen["setting"]["nprobe"] if chosen else FaissIndex().nprobe
    rng = np.random.default_rng(args.seed + 1)
    _, near = exact.search(queries, 2 * args.k)
    exclude = [rng.choice(row, size=min(args.exclude, row.size), replace=False).tolist() for row in near]
    exact1, ex_truth = latencies(exact, queries, args.k, 1, exclude)
    exactb, _ = latencies(exact, queries, args.k, args.batch, exclude)
    index.exact_fallbacks = 0
    lat1, found = latencies(index, queries, args.k, 1, exclude)
    latb, _ = latencies(index, queries, args.k, args.batch, exclude)
    banned = sum(np.isin(f, e).sum() for f, e in zip(found, exclude))
    if banned:
        raise AssertionError(f"{banned} excluded items came back from {index.kind}")
    print(f"  exclusion run: {index.exact_fallbacks} exact fallbacks in {2 * args.queries + 1 + args.batch} searches")
    params = {**index.params(), "excl": args.exclude}
    return _row("ivf+excl", params, 0.0, 0, 0, lat1, latb, recall(found, ex_truth),
                float(np.median(exact1)), float(np.median(exactb)))


if __name__ == "__main__":
    main()
