"""Ingest benchmark: plain pyarrow in one process vs `ingest_files` on Ray Data.

Both paths read the same Parquet raw files (1% duplicated ids, 0.5% broken rows) in
the same run on the same machine, and share the pure functions validate_events and
Lake.write_event_files. The pyarrow path dedupes with dedupe_events; the Ray path
applies the same rule to the keys only (aisys.data.ingest_blocks.pick_winners, tested
against dedupe_events). After timing, the benchmark asserts that both paths agree:
identical manifest counts and identical lake contents (every row of both snapshots).

It prints rows, seconds, rows/s, the ratio (pyarrow seconds / Ray seconds: 1.0 means
Ray is as fast) and the peak memory of the driver plus every process it started
(Ray's GCS, raylet and workers), sampled every 0.1 s with psutil from a separate
process: the sum of PSS (shared pages such as the object store split among the
processes that map them: the real footprint) and, for reference, the sum of RSS
(which counts each shared page once per process that maps it). Both paths are
measured with Ray up, so the pyarrow row includes idle Ray processes too. Ray is
started and warmed by a tiny untimed ingest before the clock starts.

    python benchmarks/ingest.py --rows 1000000 10000000
    python benchmarks/ingest.py --quick
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from aisys.config import config_from_dict
from aisys.data.ingest import ingest_files
from aisys.data.lake import COUNT_KEYS, Lake, Manifest, new_snapshot_id
from aisys.data.validate import ValidationRules, dedupe_events, validate_events
from aisys.runtime import init_ray
from aisys.schemas import EVENT_TYPES, schema_hash

ROWS_PER_FILE = 500_000


def _tree_memory(pid: int) -> tuple[int, int]:
    """(summed RSS, summed PSS) of ``pid`` and every process below it (Ray's GCS,
    raylet and workers are children of the driver that started Ray). RSS counts a shared
    page (the object store, libraries) once in every process that maps it; PSS splits it
    among them, so the PSS sum is the real footprint of the tree."""
    root = psutil.Process(pid)
    rss = pss = 0
    for proc in [root] + root.children(recursive=True):
        try:
            info = proc.memory_full_info()
        except psutil.Error:  # it ended between listing and reading
            continue
        rss, pss = rss + info.rss, pss + info.pss
    return rss, pss


def _sample_until(pid: int, stop, peak_rss, peak_pss, interval: float) -> None:
    while True:
        rss, pss = _tree_memory(pid)
        peak_rss.value, peak_pss.value = max(peak_rss.value, rss), max(peak_pss.value, pss)
        if stop.wait(interval):
            return


class PeakMemory:
    """Peak summed RSS and PSS of this process tree, sampled every 0.1 s from a separate
    (forked) process, so sampling neither holds the driver's GIL nor counts itself."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self._ctx = multiprocessing.get_context("fork")

    def __enter__(self) -> "PeakMemory":
        self._stop = self._ctx.Event()
        self._rss, self._pss = self._ctx.Value("q", 0), self._ctx.Value("q", 0)
        self._proc = self._ctx.Process(target=_sample_until, daemon=True,
                                       args=(os.getpid(), self._stop, self._rss, self._pss, self.interval))
        self._proc.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._proc.join()
        self.rss, self.pss = self._rss.value, self._pss.value


def write_raw_parquet(n: int, folder: Path, seed: int = 0, rows_per_file: int = ROWS_PER_FILE) -> list[str]:
    """N synthetic events as typed Parquet files, with 1% duplicates and 0.5% bad rows."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    start_us = int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp() * 1e6)
    for k, lo in enumerate(range(0, n, rows_per_file)):
        m = min(rows_per_file, n - lo)
        ids = np.arange(lo, lo + m)
        dup = rng.random(m) < 0.01
        ids[dup] = rng.integers(0, lo + m, size=int(dup.sum()))  # repeat an earlier or same-file id
        types = np.array(EVENT_TYPES[:3])[rng.integers(0, 3, size=m)]
        types[rng.random(m) < 0.005] = "teleport"  # broken rows
        ts = start_us + rng.integers(0, 30 * 86400 * 10**6, size=m)
        table = pa.table({
            "event_id": pa.array(np.char.add("e", ids.astype(str))),
            "user_id": pa.array(np.char.add("u", rng.integers(0, 50_000, size=m).astype(str))),
            "item_id": pa.array(np.char.add("i", rng.integers(0, 5_000, size=m).astype(str))),
            "event_type": pa.array(types),
            "value": pa.array(np.ones(m)),
            "timestamp": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "category": pa.array(np.char.add("c", rng.integers(0, 20, size=m).astype(str))),
            "price": pa.array(np.round(rng.lognormal(3, 1, size=m), 2)),
        })
        path = folder / f"raw-{k:04d}.parquet"
        pq.write_table(table, path)
        paths.append(str(path))
    return paths


def ingest_pyarrow(paths: list[str], lake_uri: str, rules: ValidationRules) -> Manifest:
    """The single-process baseline: read all, validate, dedupe, partitioned write, commit."""
    lake = Lake(lake_uri)
    raw = pa.concat_tables([pq.read_table(p) for p in paths])
    clean, quarantine = validate_events(raw, rules)
    unique, in_batch, in_lake = dedupe_events(clean, lake.existing_event_ids())
    sid = new_snapshot_id()
    files = lake.write_event_files(unique, sid)
    lake.write_quarantine_file(quarantine, sid)
    counts = dict(input=raw.num_rows, clean=clean.num_rows, quarantined=quarantine.num_rows,
                  duplicates_in_batch=in_batch, duplicates_in_lake=in_lake, written=unique.num_rows,
                  total_rows=unique.num_rows)
    assert set(counts) == set(COUNT_KEYS)
    manifest = Manifest(sid, None, datetime.now(timezone.utc).isoformat(), "bench", schema_hash(), counts,
                        [f for f, _ in files], [], [])
    lake.commit(manifest)
    return manifest


def _print_row(n: int, path: str, seconds: float, ratio: float, peak: "PeakMemory") -> None:
    print(f"{n:>11,} {path:<8} {seconds:>8.2f} {n / seconds:>11,.0f} {ratio:>6.2f} {peak.pss / 2**30:>10.2f}GB"
          f" {peak.rss / 2**30:>10.2f}GB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (20k rows)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir, removed after)")
    args = parser.parse_args()
    sizes = [20_000] if args.quick else args.rows
    root = Path(args.workdir or tempfile.mkdtemp(prefix="aisys-bench-"))
    cfg = config_from_dict({"paths": {"workspace": str(root / "ws")}, "ray": {"num_cpus": 2}}, "bench")
    init_ray(cfg)
    rules = ValidationRules.from_config(cfg.ingest)

    def lake_cfg(uri: str):
        return cfg.model_copy(update={"paths": cfg.paths.model_copy(update={"lake_uri": uri})})

    # Warm-up (untimed): starting Ray's worker processes and their imports is a one-off
    # cost of a fresh cluster (~2 s here), not of each ingest. Two files warm both workers.
    warm = write_raw_parquet(2000, root / "raw-warm", rows_per_file=1000)
    ingest_files(lake_cfg(str(root / "lake-warm")), warm, source="warm")
    header = f"{'rows':>11} {'path':<8} {'seconds':>8} {'rows/s':>11} {'ratio':>6} {'peak PSS':>12} {'(RSS sum)':>12}"
    lines = []
    try:
        for run, n in enumerate(sizes):
            paths = write_raw_parquet(n, root / f"raw-{run}-{n}")
            with PeakMemory() as rss_a:
                t0 = time.perf_counter()
                m_a = ingest_pyarrow(paths, str(root / f"lake-pa-{run}-{n}"), rules)
                sec_a = time.perf_counter() - t0
            # Hand the pyarrow path's freed memory back to the OS (Arrow's allocator keeps
            # it otherwise) so that it does not count against the Ray path.
            gc.collect()
            pa.default_memory_pool().release_unused()
            with PeakMemory() as rss_b:
                t0 = time.perf_counter()
                m_b = ingest_files(lake_cfg(str(root / f"lake-ray-{run}-{n}")), paths, source="bench")
                sec_b = time.perf_counter() - t0
            assert m_a.counts == m_b.counts, f"paths disagree: {m_a.counts} vs {m_b.counts}"
            same = Lake(str(root / f"lake-pa-{run}-{n}")).read_events().equals(Lake(str(root / f"lake-ray-{run}-{n}")).read_events())
            assert same, f"{n} rows: the two lakes hold different rows"
            lines.append((n, sec_a, rss_a, sec_b, rss_b, m_b.counts))
            print(header)
            _print_row(n, "pyarrow", sec_a, 1.0, rss_a)
            _print_row(n, "ray", sec_b, sec_a / sec_b, rss_b)
            print(f"{'':>11} both paths: equal counts {m_b.counts} and equal lake rows", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(header)
    for n, sec_a, peak_a, sec_b, peak_b, _ in lines:
        _print_row(n, "pyarrow", sec_a, 1.0, peak_a)
        _print_row(n, "ray", sec_b, sec_a / sec_b, peak_b)


if __name__ == "__main__":
    main()
