"""Closed-loop and open-loop HTTP load with aiohttp, counting errors and popularity fallbacks.

- :func:`send_on_schedule`: the one open-loop scheduling core. Request ``n`` goes out at ``t0 + n / rate``
  whatever the answers; each outcome (status or exception, body, scheduled/sent/done times) is handed to a
  ``record`` callback; nothing is retried. :func:`open_loop`, the soak benchmark's load and the replica-kill
  test's driver all send through it.
- :func:`closed_loop`: ``concurrency`` clients, each sending its next request when its last one is answered
  (throughput at a fixed number of users).
- :func:`open_loop`: requests sent on a fixed schedule of ``rate`` per second whatever the answers, latency
  measured from each request's *scheduled* send time, so a stalled server cannot hide its queue (no coordinated
  omission).

Each :func:`closed_loop` / :func:`open_loop` request is ``GET {url}{path}`` with ``path`` drawn at random from
``paths`` and ``urls`` shared round-robin by the clients. A first ``warmup_s`` of load is sent but not measured.
aiohttp is imported only when a load runs.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

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


# ------------------------------------------------------------------ the open-loop core


@dataclass(frozen=True)
class Send:
    """One request to send: ``url`` is absolute, or a path when the session has a ``base_url``.

    ``json`` is sent as a JSON body, ``data`` as raw bytes (at most one of them); ``tag`` is the caller's own,
    handed back untouched in the :class:`Outcome`.
    """

    method: str
    url: str
    json: Any = None
    data: bytes | None = None
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] | None = None
    tag: Any = None


@dataclass(frozen=True)
class Outcome:
    """What became of request ``n``: an HTTP status, or the exception that stood in for one (never raised)."""

    n: int
    request: Send
    status: int | None  # None: no answer (refused, reset, timed out); see ``error``
    error: str | None  # the exception's type name, e.g. "ClientConnectorError", "TimeoutError"
    error_text: str  # "{type}: {message}" for the exception, "" for an answer
    body: bytes
    scheduled: float  # time.perf_counter() values
    sent: float
    done: float

    @property
    def latency(self) -> float:
        """Seconds from the *scheduled* send time to the end of the answer (a late send counts in full)."""
        return self.done - self.scheduled

    @property
    def outcome(self) -> str:
        """The status as text, or the exception's type name."""
        return str(self.status) if self.status is not None else str(self.error)


@dataclass
class ScheduleStats:
    """What one :func:`send_on_schedule` run did."""

    scheduled: int = 0  # requests whose slot came up (``make_request`` was called for each)
    sent: int = 0
    skipped: int = 0  # slots dropped because ``max_in_flight`` requests were still open (counted, not hidden)
    unfinished: int = 0  # still in flight when the drain timeout ran out


async def _send(session, n: int, req: Send, scheduled: float, record: Callable[[Outcome], None]) -> None:
    kwargs: dict[str, Any] = {}
    if req.params is not None:
        kwargs["params"] = req.params
    if req.headers is not None:
        kwargs["headers"] = dict(req.headers)
    if req.data is not None:
        kwargs["data"] = req.data
    elif req.json is not None:
        kwargs["json"] = req.json
    status, body, error, error_text = None, b"", None, ""
    sent = time.perf_counter()
    try:
        async with session.request(req.method, req.url, **kwargs) as resp:
            body = await resp.read()
            status = resp.status
    except Exception as err:  # refused, reset, timed out: an outcome of the server under test, not a crash
        error, error_text = type(err).__name__, f"{type(err).__name__}: {err}"
    record(Outcome(n, req, status, error, error_text, body, scheduled, sent, time.perf_counter()))


async def send_on_schedule(session, rate: float, make_request: Callable[[int], Send],
                           record: Callable[[Outcome], None], *, should_stop: Callable[[], bool] | None = None,
                           limit: int | None = None, max_in_flight: int | None = None,
                           drain_timeout_s: float | None = 60.0, stats: ScheduleStats | None = None,
                           ) -> ScheduleStats:
    """Send request ``n`` at ``t0 + n / rate`` whatever the answers do; hand each :class:`Outcome` to ``record``.

    Open loop, on purpose: a client that waits for an answer before sending the next request slows down exactly
    when the server stalls, so the requests a real population would have sent meanwhile are never sent and never
    measured (coordinated omission). Here the schedule is fixed, and each outcome carries its *scheduled* time,
    so :attr:`Outcome.latency` counts a stall (and a late send by this client) in full.

    - ``session``: an ``aiohttp.ClientSession`` (its timeout bounds each request); ``make_request(n)`` says what
      request ``n`` is, and is called for every slot, skipped or not (a seeded mix stays the same sequence).
    - Stops before the next slot once ``limit`` requests were scheduled or ``should_stop()`` is true (a deadline
      or an external flag; checked at least every 0.1 s while waiting), then waits up to ``drain_timeout_s``
      (None: forever) for the requests in flight.
    - ``max_in_flight``: a slot that comes while that many requests are open is skipped and counted.
    - Never retries, and never raises for a failed request: the exception's type is the outcome.
    - Always yields to the event loop before each send, even when behind, so the answers (and whoever sets the
      stop flag) keep running on the same loop.

    Returns the counts (``stats`` if given, updated as the run goes, so a caller can read them live).
    """
    if rate <= 0:
        raise ValueError(f"need rate > 0, got {rate}")
    stats = stats if stats is not None else ScheduleStats()
    tasks: set[asyncio.Task] = set()
    in_flight = 0

    def finished(task: asyncio.Task) -> None:
        nonlocal in_flight
        in_flight -= 1
        tasks.discard(task)

    t0 = time.perf_counter()
    n = 0
    while limit is None or n < limit:
        if should_stop is not None and should_stop():
            break
        scheduled = t0 + n / rate
        stopped = False
        while (delay := scheduled - time.perf_counter()) > 0:
            await asyncio.sleep(min(delay, 0.1))
            if should_stop is not None and should_stop():
                stopped = True
                break
        if stopped:
            break
        if delay <= 0:
            await asyncio.sleep(0)  # behind schedule: still let the answers run
        req = make_request(n)
        stats.scheduled += 1
        n += 1
        if max_in_flight is not None and in_flight >= max_in_flight:
            stats.skipped += 1
            continue
        in_flight += 1
        stats.sent += 1
        task = asyncio.create_task(_send(session, n - 1, req, scheduled, record))
        tasks.add(task)
        task.add_done_callback(finished)
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=drain_timeout_s)
        stats.unfinished = len(pending)
    return stats


async def _one(session, url: str, path: str, started: float, tally: _Tally | None, totals: _Tally) -> None:
    """One closed-loop request (the next one waits for it)."""
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


def client_session(headers: dict[str, str] | None = None, limit: int = 512, timeout_s: float = 60.0,
                   base_url: str | None = None):
    """An ``aiohttp.ClientSession`` for load: at most ``limit`` connections, ``timeout_s`` per request."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=limit, enable_cleanup_closed=True)
    return aiohttp.ClientSession(base_url=base_url, connector=connector, headers=headers or {},
                                 timeout=aiohttp.ClientTimeout(total=timeout_s))


async def closed_loop(urls: Sequence[str], paths: Sequence[str], concurrency: int, duration_s: float,
                      warmup_s: float = 1.0, headers: dict[str, str] | None = None, seed: int = 0,
                      timeout_s: float = 60.0) -> LoadResult:
    """``concurrency`` clients, each sending its next request when its last one is answered."""
    if concurrency < 1 or duration_s <= 0:
        raise ValueError(f"need concurrency >= 1 and duration_s > 0, got {concurrency}, {duration_s}")
    tally = _Tally()
    async with client_session(headers or {}, concurrency, timeout_s) as session:
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

    def make(n: int) -> Send:  # tag: measured (False during the warm-up)
        return Send("GET", urls[n % len(urls)] + rng.choice(paths), tag=n >= warmup_s * rate)

    def record(out: Outcome) -> None:
        if out.status is None:
            if out.request.tag:
                tally.error(out.error_text)
            return
        tally.answered_total += 1
        if not out.request.tag:
            return
        if out.status != 200:
            tally.error(f"HTTP {out.status}: {out.body[:120]!r}")
            return
        tally.latencies.append(out.latency)
        if FALLBACK_MARK in out.body:
            tally.fallbacks += 1

    async with client_session(headers or {}, max_connections, timeout_s) as session:
        await send_on_schedule(session, rate, make, record, limit=int((warmup_s + duration_s) * rate),
                               drain_timeout_s=None)
    return tally.result(LoadResult("open", None, rate, duration_s))
