"""The shared load generator: percentiles as numpy computes them, the open-loop core and both loops against a real
local server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from aisys.loadgen.http import Outcome, ScheduleStats, Send, client_session, closed_loop, open_loop, send_on_schedule
from aisys.loadgen.stats import latency_summary, percentile


def test_percentile_matches_numpy_linear_interpolation():
    rng = np.random.default_rng(0)
    values = list(rng.exponential(size=101))
    for q in (0, 1, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], 101)


def test_latency_summary_is_in_milliseconds():
    summary = latency_summary([0.001, 0.002, 0.003])
    assert summary == {"p50_ms": 2.0, "p90_ms": 2.8, "p99_ms": 2.98, "max_ms": 3.0}
    assert latency_summary([]) == {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server
    hits: list[str] = []  # every request path the server saw (reset by the fixture)
    posted: list[bytes] = []  # every POST body

    def do_GET(self):  # noqa: N802 (http.server's name)
        _Handler.hits.append(self.path)
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        status = 503 if "unavailable" in self.path else 500 if "bad" in self.path else 200
        body = json.dumps({"fallback": "cold" in self.path}, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        _Handler.hits.append(self.path)
        _Handler.posted.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server_url():
    _Handler.hits, _Handler.posted = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_closed_loop_counts_answers_errors_and_fallbacks(server_url):
    paths = ["/ok", "/cold", "/bad"]
    result = asyncio.run(closed_loop([server_url], paths, concurrency=2, duration_s=0.5, warmup_s=0.1))
    assert result.load == "closed" and result.concurrency == 2
    assert result.requests > 0 and result.errors > 0 and result.fallbacks > 0
    assert result.errors + result.requests <= result.answered_total  # the warm-up's answers count only there
    assert result.error_samples and result.error_samples[0].startswith("HTTP 500")
    assert result.p50_ms is not None and result.p50_ms <= result.p99_ms


def test_open_loop_sends_on_schedule(server_url):
    result = asyncio.run(open_loop([server_url], ["/ok"], rate=40, duration_s=0.5, warmup_s=0.25))
    assert result.load == "open" and result.rate == 40
    assert result.requests == 20 and result.errors == 0  # 40/s for 0.5 s measured, after 10 warm-up requests
    assert result.answered_total == 30


def _run(rate, make_request, **kwargs) -> tuple[list[Outcome], ScheduleStats]:
    outcomes: list[Outcome] = []

    async def go():
        async with client_session(timeout_s=10) as session:
            return await send_on_schedule(session, rate, make_request, outcomes.append, **kwargs)

    return outcomes, asyncio.run(go())


def test_send_on_schedule_sends_each_request_once_on_its_slot(server_url):
    deadline = time.perf_counter() + 1.0
    outcomes, stats = _run(50, lambda n: Send("GET", f"{server_url}/unavailable/{n}", tag=n),
                           should_stop=lambda: time.perf_counter() >= deadline)
    # 50/s for 1 s: slots 0..49 at most (slot 50 is due at the deadline); generous below for a loaded box.
    assert 30 <= stats.sent == stats.scheduled == len(outcomes) <= 50 and stats.skipped == 0
    assert sorted(o.n for o in outcomes) == list(range(stats.sent))
    assert all(o.request.tag == o.n and o.status == 503 and o.error is None for o in outcomes)
    # A 503 is an outcome, not a reason to send again: the server saw each request exactly once.
    assert sorted(_Handler.hits) == sorted(f"/unavailable/{n}" for n in range(stats.sent))
    by_n = sorted(outcomes, key=lambda o: o.n)
    t0 = by_n[0].scheduled
    for o in by_n:
        assert o.scheduled == pytest.approx(t0 + o.n / 50, abs=1e-6)  # the slot, not when it went out
        assert o.sent >= o.scheduled - 1e-6 and o.done >= o.sent
        assert o.latency == pytest.approx(o.done - o.scheduled)
    assert by_n[-1].sent - by_n[0].sent >= 0.5  # spread over the second, not sent in a burst


def test_send_on_schedule_posts_json_and_raw_bodies(server_url):
    def make(n: int) -> Send:
        if n % 2:
            return Send("POST", server_url + "/events", data=b'{"raw": %d}' % n,
                        headers={"Content-Type": "application/json"})
        return Send("POST", server_url + "/events", json={"event_id": f"e-{n}"})

    outcomes, stats = _run(40, make, limit=6)
    assert stats.sent == 6 and [o.status for o in outcomes] == [202] * 6
    got = sorted(json.dumps(json.loads(body), sort_keys=True) for body in _Handler.posted)
    want = [{"event_id": "e-0"}, {"raw": 1}, {"event_id": "e-2"}, {"raw": 3}, {"event_id": "e-4"}, {"raw": 5}]
    assert got == sorted(json.dumps(body, sort_keys=True) for body in want)


def test_send_on_schedule_records_a_refused_connection_instead_of_raising():
    with socket.socket() as sock:  # a port that was just free: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    outcomes, stats = _run(20, lambda n: Send("GET", f"http://127.0.0.1:{port}/x"), limit=3)
    assert stats.sent == 3 and len(outcomes) == 3
    for o in outcomes:
        assert o.status is None and o.error and o.outcome == o.error and o.error_text.startswith(o.error)
        assert "Connect" in o.error or "Connection" in o.error_text


def test_send_on_schedule_stops_on_the_flag_without_waiting_for_the_next_slot(server_url):
    flag = threading.Event()
    threading.Timer(0.3, flag.set).start()
    started = time.perf_counter()
    outcomes, stats = _run(0.1, lambda n: Send("GET", server_url + "/ok"), should_stop=flag.is_set)
    assert time.perf_counter() - started < 5.0  # the second slot is due only at 10 s
    assert stats.sent == 1 and len(outcomes) == 1 and outcomes[0].status == 200


def test_send_on_schedule_skips_slots_beyond_max_in_flight_and_counts_them(server_url):
    made: list[int] = []

    def make(n: int) -> Send:
        made.append(n)
        return Send("GET", server_url + "/slow")

    outcomes, stats = _run(50, make, limit=10, max_in_flight=2)
    assert made == list(range(10))  # every slot drew its request, sent or not
    assert stats.sent == 2 and stats.skipped == 8 and len(outcomes) == 2
    assert all(o.status == 200 and o.latency >= 0.9 for o in outcomes)
