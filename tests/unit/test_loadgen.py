"""The shared load generator: percentiles as numpy computes them, and both loops against a real local server."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from aisys.loadgen.http import closed_loop, open_loop
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
    def do_GET(self):  # noqa: N802 (http.server's name)
        status = 500 if "bad" in self.path else 200
        body = json.dumps({"fallback": "cold" in self.path}, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server_url():
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
