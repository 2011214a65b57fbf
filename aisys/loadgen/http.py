"""Closed-loop and open-loop HTTP load with aiohttp, counting errors and popularity fallbacks.

- :func:`closed_loop`: ``concurrency`` clients, each sending its next request when its last one is answered
  (throughput at a fixed number of users).
- :func:`open_loop`: requests sent on a fixed schedule of ``rate`` per second whatever the answers, latency
  measured from each request's *scheduled* send time, so a stalled server cannot hide its queue (no coordinated
  omission).

Each request is ``GET {url}{path}`` with ``path`` drawn at random from ``paths`` and ``urls`` shared round-robin
by the clients. A first ``warmup_s`` of load is sent but not measured.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from aisys.loadgen.stats import latency_summary

FALLBACK_MARK = b'"fallback":true'  # a cheaper popularity answer: counted, so a table cannot flatter
KEPT_ERROR_SAMPLES = 3


@dataclass
class LoadResult:
    """One load cell: its shape and what was measured."""

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
    answered_total: int = 0  # every answer, warm-up included: what a server's CPU over the whole cell served

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Tally:
    """Per-cell counts shared by the client tasks (one event loop: no locks)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.fallbacks = 0
        self.samples: list[str] = []
        self.answered_total = 0

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.samples) < KEPT_ERROR_SAMPLES:
            self.samples.append(what[:200])

    def result(self, cell: LoadResult) -> LoadResult:
        cell.requests, cell.errors, cell.fallbacks, cell.error_samples = (
            len(self.latencies), self.errors, self.fallbacks, self.samples)
        cell.answered_total = self.answered_total
        cell.rps = round(len(self.latencies) / cell.duration_s, 1) if cell.duration_s > 0 else 0.0
        for key, value in latency_summary(self.latencies).items():
            setattr(cell, key, value)
        return cell


async def _one(session, url: str, path: str, started: float, tally: _Tally | None, totals: _Tally) -> None:
    try:
        async with session.get(url + path) as resp:
            body = await resp.read()
            status = resp.status
    except Exception as err:  # a refused or reset connection is an error of the server under test
        if tally is not None:
            tally.error(f"{type(err).__name__}: {err}")
        return
    totals.answered_total += 1
    if tally is None:
        return
    if status != 200:
        tally.error(f"HTTP {status}: {body[:120]!r}")
        return
    tally.latencies.append(time.perf_counter() - started)
    if FALLBACK_MARK in body:
        tally.fallbacks += 1


def _session(headers: dict[str, str], limit: int, timeout_s: float):
    import aiohttp

    connector = aiohttp.TCPConnector(limit=limit, enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=connector, headers=headers,
                                 timeout=aiohttp.ClientTimeout(total=timeout_s))


async def closed_loop(urls: Sequence[str], paths: Sequence[str], concurrency: int, duration_s: float,
                      warmup_s: float = 1.0, headers: dict[str, str] | None = None, seed: int = 0,
                      timeout_s: float = 60.0) -> LoadResult:
    """``concurrency`` clients, each sending its next request when its last one is answered."""
    if concurrency < 1 or duration_s <= 0:
        raise ValueError(f"need concurrency >= 1 and duration_s > 0, got {concurrency}, {duration_s}")
    tally = _Tally()
    async with _session(headers or {}, concurrency, timeout_s) as session:
        t_start = time.perf_counter()
        t_measure, t_end = t_start + warmup_s, t_start + warmup_s + duration_s

        async def client(n: int) -> None:
            rng, url = random.Random(seed * 1_000_003 + n), urls[n % len(urls)]
            while (now := time.perf_counter()) < t_end:
                await _one(session, url, rng.choice(paths), now, tally if now >= t_measure else None, tally)

        await asyncio.gather(*(client(n) for n in range(concurrency)))
    return tally.result(LoadResult("closed", concurrency, None, duration_s))


async def open_loop(urls: Sequence[str], paths: Sequence[str], rate: float, duration_s: float,
                    warmup_s: float = 1.0, headers: dict[str, str] | None = None, seed: int = 0,
                    timeout_s: float = 60.0, max_connections: int = 512) -> LoadResult:
    """Requests on a fixed schedule of ``rate`` per second; latency from each one's scheduled send time."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError(f"need rate > 0 and duration_s > 0, got {rate}, {duration_s}")
    tally = _Tally()
    rng = random.Random(seed)
    async with _session(headers or {}, max_connections, timeout_s) as session:
        tasks = []
        t0 = time.perf_counter()
        for n in range(int((warmup_s + duration_s) * rate)):
            scheduled = t0 + n / rate
            if (delay := scheduled - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            measured = tally if n >= warmup_s * rate else None
            tasks.append(asyncio.create_task(_one(session, urls[n % len(urls)], rng.choice(paths), scheduled,
                                                  measured, tally)))
        await asyncio.gather(*tasks)
    return tally.result(LoadResult("open", None, rate, duration_s))
