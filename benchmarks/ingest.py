"""Ingest benchmark: plain pyarrow in one process vs `ingest_files` on Ray Data.

Both paths run the same pure functions (validate_events, dedupe_events,
Lake.write_event_files) on the same Parquet raw files (1% duplicated rows,
0.5% broken rows), in the same run. Prints rows, seconds, rows/s, the Ray/pyarrow
throughput ratio, and the peak RSS of the driver plus every process it started
(Ray's GCS, raylet and workers), sampled every 0.2 s from /proc (psutil is not in
the pinned environment; this is what psutil reads on Linux). RSS counts the
object store's shared pages in each process that touches them, so it over-states
rather than under-states. Ray is started before the clock starts.

    python benchmarks/ingest.py --rows 1000000 10000000
    python benchmarks/ingest.py --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aisys.config import config_from_dict
from aisys.data.ingest import ingest_files
from aisys.data.lake import COUNT_KEYS, Lake, Manifest, new_snapshot_id
from aisys.data.validate import ValidationRules, dedupe_events, validate_events
from aisys.runtime import init_ray
from aisys.schemas import EVENT_TYPES, schema_hash

ROWS_PER_FILE = 500_000


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it, from /proc/*/stat parent ids."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakRss:
    """Samples the summed RSS of this process and all its descendants in a thread."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _sample(self) -> int:
        return sum(_rss(pid) for pid in _descendants(os.getpid()))

    def __enter__(self) -> "PeakRss":
        self.peak = self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._sample())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def write_raw_parquet(n: int, folder: Path, seed: int = 0) -> list[str]:
    """N synthetic events as typed Parquet files, with 1% duplicates and 0.5% bad rows."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    start_us = int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp() * 1e6)
    for k, lo in enumerate(range(0, n, ROWS_PER_FILE)):
        m = min(ROWS_PER_FILE, n - lo)
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
    results = []
    try:
        for n in sizes:
            paths = write_raw_parquet(n, root / f"raw-{n}")
            with PeakRss() as rss_a:
                t0 = time.perf_counter()
                m_a = ingest_pyarrow(paths, str(root / f"lake-pa-{n}"), rules)
                sec_a = time.perf_counter() - t0
            run_cfg = cfg.model_copy(update={"paths": cfg.paths.model_copy(update={"lake_uri": str(root / f"lake-ray-{n}")})})
            with PeakRss() as rss_b:
                t0 = time.perf_counter()
                m_b = ingest_files(run_cfg, paths, source="bench")
                sec_b = time.perf_counter() - t0
            assert m_a.counts == m_b.counts, f"paths disagree: {m_a.counts} vs {m_b.counts}"
            results.append((n, sec_a, rss_a.peak, sec_b, rss_b.peak, m_b.counts))
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"{'rows':>11} {'path':<8} {'seconds':>8} {'rows/s':>11} {'ratio':>6} {'peak RSS':>9}")
    for n, sec_a, peak_a, sec_b, peak_b, counts in results:
        print(f"{n:>11,} {'pyarrow':<8} {sec_a:>8.2f} {n / sec_a:>11,.0f} {'1.00':>6} {peak_a / 2**30:>7.2f}GB")
        print(f"{n:>11,} {'ray':<8} {sec_b:>8.2f} {n / sec_b:>11,.0f} {sec_a / sec_b:>6.2f} {peak_b / 2**30:>7.2f}GB")
        print(f"{'':>11} counts (both paths equal): {counts}")


if __name__ == "__main__":
    main()
