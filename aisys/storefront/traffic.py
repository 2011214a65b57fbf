"""Live request rate and latency for the operator view: a rolling window in this replica (pure + ASGI).

Ray Serve's metrics go to Prometheus, which the operator view cannot assume is running. So the
pages' app keeps its own small window: the last ``window_s`` seconds of requests with their
latency and status. :class:`RequestWindow` is pure (a clock is injected); :class:`TrafficMiddleware`
feeds it. The numbers are this replica's, and the view says so.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable

from aisys.loadgen.stats import percentile

DEFAULT_WINDOW_S = 60.0
MAX_SAMPLES = 50_000  # bounds memory under a flood; the rate is then a floor


class RequestWindow:
    """Requests of the last ``window_s`` seconds: ``(time, latency ms, status)``. Thread-safe."""

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self.clock = clock
        self.started = clock()
        self._samples: deque[tuple[float, float, int]] = deque(maxlen=MAX_SAMPLES)
        self._lock = threading.Lock()

    def record(self, latency_ms: float, status: int) -> None:
        with self._lock:
            self._samples.append((self.clock(), float(latency_ms), int(status)))

    def summary(self) -> dict[str, Any]:
        """``requests``, ``rate_per_s``, ``p50_ms``, ``p95_ms``, ``error_share`` over the window."""
        now = self.clock()
        with self._lock:
            while self._samples and self._samples[0][0] < now - self.window_s:
                self._samples.popleft()
            samples = list(self._samples)
        # A replica up for 10 s has a 10 s window, not 60: dividing by 60 would under-report the rate.
        span = max(1e-9, min(self.window_s, now - self.started))
        latencies = [s[1] for s in samples]
        errors = sum(1 for s in samples if s[2] >= 500)
        return {
            "window_s": self.window_s,
            "requests": len(samples),
            "rate_per_s": len(samples) / span,
            "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95),
            "error_share": errors / len(samples) if samples else None,
            "scope": "this replica",
        }


class TrafficMiddleware:
    """Times every HTTP request but the pages' own polling of the overview and their static files."""

    SKIP = ("/admin/overview", "/shop/static/")

    def __init__(self, app: Any, window: RequestWindow) -> None:
        self.app = app
        self.window = window

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(self.SKIP):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_and_note(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.window.record((time.perf_counter() - started) * 1000.0, status["code"])
