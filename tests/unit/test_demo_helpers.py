"""Pure helpers of the demo: the live-tail split and latency percentiles."""

import math
from datetime import datetime, timedelta, timezone

import pyarrow as pa

from aisys.demo import latency_percentiles, split_live_tail


def test_split_live_tail_keeps_time_order_and_counts():
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    # Rows deliberately out of order: the split must sort by time.
    ts = [t0 + timedelta(minutes=m) for m in (5, 1, 3, 2, 4)]
    table = pa.table({"event_id": [f"e{m}" for m in (5, 1, 3, 2, 4)], "timestamp": ts})
    history, live = split_live_tail(table, 2)
    assert history.num_rows == 3 and live.num_rows == 2
    assert live.column("event_id").to_pylist() == ["e4", "e5"]
    assert max(history.column("timestamp").to_pylist()) < min(live.column("timestamp").to_pylist())


def test_split_live_tail_never_empties_history():
    table = pa.table({"event_id": ["a", "b"], "timestamp": [1, 2]})
    history, live = split_live_tail(table, 10)
    assert history.num_rows == 1 and live.num_rows == 1


def test_latency_percentiles():
    p = latency_percentiles([0.001 * i for i in range(1, 101)])
    assert abs(p["p50_ms"] - 50.5) < 1e-6
    assert 98 < p["p99_ms"] <= 100
    assert math.isnan(latency_percentiles([])["p50_ms"])


# ---------------------------------------------------------------- the demo's traffic against a real gateway


class FakeClock:
    """The gateway's clock; the demo client's ``sleep`` advances it, so waiting costs no wall time."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _gateway_app(clock: FakeClock, rate_per_s: float, burst: int):
    """A FastAPI app behind the real gateway (auth + per-key token buckets) with the demo's four routes."""
    from typing import Annotated

    from fastapi import Depends, FastAPI

    from aisys.config import config_from_dict
    from aisys.gateway import Gateway, InMemoryKeyStore, InMemoryRateLimiter, Principal, create_key
    from aisys.gateway.errors import install_error_handlers

    cfg = config_from_dict({"gateway": {"rate_limit_per_s": rate_per_s, "rate_limit_burst": burst, "rate_limit_backend": "memory"}})
    store = InMemoryKeyStore()
    key = create_key(store, "dev-admin", ["admin"])
    gateway = Gateway(cfg, store, InMemoryRateLimiter(clock))
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/recommendations/{user_id}")
    async def recommendations(user_id: str, who: Annotated[Principal, Depends(gateway.require("recommend"))]) -> dict:
        return {"user_id": user_id, "items": [{"item_id": "i1"}], "fallback": user_id.startswith("new-")}

    @app.post("/events", status_code=202)
    async def events(body: dict, who: Annotated[Principal, Depends(gateway.require("events"))]) -> dict:
        return {"accepted": True}

    @app.get("/model")
    async def model(who: Annotated[Principal, Depends(gateway.require("recommend"))]) -> dict:
        return {"version": "1"}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    gateway.install(app)
    return app, key


def _live_table(n: int) -> pa.Table:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return pa.table({
        "event_id": [f"e{i}" for i in range(n)],
        "user_id": [f"u{i % 7}" for i in range(n)],
        "item_id": ["i1" if i % 2 else "i2" for i in range(n)],
        "event_type": ["view"] * n,
        "value": [1.0] * n,
        "timestamp": [t0 + timedelta(seconds=i) for i in range(n)],
        "category": ["c0"] * n,
        "price": [1.0] * n,
    })


def test_demo_traffic_faster_than_the_rate_limit_still_succeeds():
    """The demo sends far more than the key's bucket allows at once; it waits out every 429 and nothing fails."""
    from fastapi.testclient import TestClient

    from aisys.demo import demo_problems, replay_live_traffic

    clock = FakeClock()
    app, key = _gateway_app(clock, rate_per_s=2.0, burst=5)
    with TestClient(app) as client:
        traffic = replay_live_traffic("http://testserver", _live_table(20), n_requests=20, api_key=key,
                                      client=client, sleep=clock.sleep)
    assert traffic["rate_limited_retries"] > 0, "the traffic never exceeded the limit: the test proves nothing"
    assert traffic["answers_by_status"]["429"] == traffic["rate_limited_retries"]
    assert traffic["errors"] == 0 and traffic["failures"] == []
    assert traffic["events_accepted"] == traffic["events_posted"] == 20
    assert traffic["requests"] == 40
    assert traffic["answers_by_status"]["200"] == 40 + 2 and traffic["answers_by_status"]["202"] == 20
    # Each wait is what the gateway's Retry-After asked for: whole seconds, at least 1.
    assert clock.slept and all(s >= 1 and s == int(s) for s in clock.slept)
    assert demo_problems(traffic) == []


def test_demo_failure_says_what_failed():
    """A key without the needed scope: every request fails, and the problems name the status and route."""
    from fastapi.testclient import TestClient

    from aisys.demo import demo_problems, replay_live_traffic

    clock = FakeClock()
    app, _ = _gateway_app(clock, rate_per_s=100.0, burst=100)
    with TestClient(app) as client:
        traffic = replay_live_traffic("http://testserver", _live_table(3), n_requests=2, api_key="not-a-key",
                                      client=client, sleep=clock.sleep)
    problems = demo_problems(traffic)
    assert traffic["errors"] == 3 + 3 + 2 + 1  # recommendations, events, extra requests, /model
    assert problems[0].startswith("9 requests failed after retries (answers: 9 x 401)")
    assert any("GET /recommendations/u0 -> 401" in line for line in problems)
    assert any("events were not accepted" in line for line in problems)


def test_the_demo_traffic_reports_progress_up_to_its_total():
    from fastapi.testclient import TestClient

    from aisys.demo import replay_live_traffic

    clock = FakeClock()
    app, key = _gateway_app(clock, rate_per_s=100.0, burst=100)
    seen: list[tuple[int, int]] = []
    with TestClient(app) as client:
        replay_live_traffic("http://testserver", _live_table(5), n_requests=4, api_key=key, client=client,
                            sleep=clock.sleep, on_request=lambda done, total: seen.append((done, total)))
    assert {total for _, total in seen} == {2 * 5 + 4 + 2}
    dones = [done for done, _ in seen]
    assert dones == sorted(dones) and dones[-1] == 16 and len(dones) == 5 + 4 + 1
