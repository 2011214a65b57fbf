"""The soak benchmark's load: who it is for (a user population, some users new), the request mix with each
kind's expected statuses, and the open-loop sender with its per-window tallies.

The schedule is the shared one (:func:`aisys.loadgen.http.send_on_schedule`, as for ``open_loop`` and the
replica-kill test); what is soak's own is what it sends and how it judges: a mix of methods and bodies (events,
bad input, oversized bodies, unknown keys), each answer judged against its kind's expected statuses, a window of
tallies handed out on every sample. The percentiles are the shared ones (:mod:`aisys.loadgen.stats`).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

from aisys.loadgen.http import Outcome, ScheduleStats, Send
from aisys.loadgen.stats import percentile
from soak_measure import classify_status

@dataclass
class Population:
    """Who and what the load talks about: known users, a bounded pool of new users, items with their weights."""

    users: list[str]
    new_users: list[str]
    items: list[str]
    weights: list[float]
    category: dict[str, str | None]
    price: dict[str, float | None]

    @classmethod
    def from_lake(cls, cfg, n_new_users: int) -> "Population":
        from aisys.data.lake import Lake
        from aisys.storefront.catalogue import build_catalogue

        lake = Lake.from_config(cfg.paths)
        events = lake.read_events(lake.latest().snapshot_id)
        catalogue = build_catalogue(events)
        users = sorted(set(events.column("user_id").to_pylist()))
        products = catalogue.products
        return cls(users=users, new_users=[f"soak-new-{n}" for n in range(n_new_users)],
                   items=[p.item_id for p in products], weights=[float(p.popularity) for p in products],
                   category={p.item_id: p.category for p in products}, price={p.item_id: p.price for p in products})


# ------------------------------------------------------------------ the load


@dataclass(frozen=True)
class Request:
    """One request of the mix and the statuses it is meant to get."""

    kind: str
    method: str
    path: str
    key: str | None
    expected: tuple[int, ...]
    params: dict[str, Any] | None = None
    body: Any = None
    raw_body: bytes | None = None


# kind -> share of the load. Recommendations dominate, as on a shop; every other path runs every few seconds.
MIX = {
    "recommend": 0.58,
    "event": 0.20,
    "catalogue": 0.05,
    "shop_page": 0.02,
    "admin_overview": 0.02,
    "model": 0.02,
    "healthz": 0.02,
    "bad_422": 0.02,
    "no_key_401": 0.015,
    "too_big_413": 0.005,
    "limited": 0.05,
}
EVENT_TYPES = (("view", 0.70), ("add_to_cart", 0.15), ("purchase", 0.05), ("rating", 0.10))
NEW_USER_SHARE = 0.15  # of the users in recommendation and event requests


class RequestMaker:
    """Draws the next request of the mix (seeded, so two runs send the same sequence)."""

    def __init__(self, population: Population, keys: Mapping[str, str], max_body_bytes: int, seed: int = 0):
        self.pop, self.keys, self.rng = population, keys, random.Random(seed)
        self.kinds, self.shares = list(MIX), list(MIX.values())
        self.big_body = b'{"user_id": "' + b"x" * (max_body_bytes + 1024) + b'"}'
        self.n = 0

    def _user(self) -> str:
        pool = self.pop.new_users if self.rng.random() < NEW_USER_SHARE else self.pop.users
        return self.rng.choice(pool)

    def _event(self) -> dict[str, Any]:
        item = self.rng.choices(self.pop.items, self.pop.weights)[0]
        etype = self.rng.choices([t for t, _ in EVENT_TYPES], [w for _, w in EVENT_TYPES])[0]
        event: dict[str, Any] = {"event_id": f"soak-{os.getpid()}-{self.n}", "user_id": self._user(),
                                 "item_id": item, "event_type": etype,
                                 "value": float(self.rng.randint(1, 5)) if etype == "rating" else 1.0}
        if self.pop.category.get(item):
            event["category"] = self.pop.category[item]
        if self.pop.price.get(item) is not None:
            event["price"] = self.pop.price[item]
        return event

    def next(self) -> Request:
        self.n += 1
        kind = self.rng.choices(self.kinds, self.shares)[0]
        app, shop, admin = self.keys["app"], self.keys["storefront"], self.keys["admin"]
        if kind == "recommend":
            return Request(kind, "GET", f"/recommendations/{self._user()}", app, (200,),
                           params={"k": self.rng.choice((5, 10, 10, 20))})
        if kind == "event":
            return Request(kind, "POST", "/events", app, (202,), body=self._event())
        if kind == "catalogue":
            return Request(kind, "GET", "/catalogue", shop, (200,), params={"limit": 24, "offset": self.rng.choice((0, 24, 48))})
        if kind == "shop_page":
            return Request(kind, "GET", "/shop", None, (200,))
        if kind == "admin_overview":
            return Request(kind, "GET", "/admin/overview", admin, (200,))
        if kind == "model":
            return Request(kind, "GET", "/model", app, (200,))
        if kind == "healthz":
            return Request(kind, "GET", "/healthz", None, (200,))
        if kind == "bad_422":
            if self.rng.random() < 0.5:
                return Request(kind, "GET", f"/recommendations/{self._user()}", app, (422,), params={"k": 0})
            return Request(kind, "POST", "/events", app, (422,), body={**self._event(), "event_type": "teleport"})
        if kind == "no_key_401":
            key = None if self.rng.random() < 0.5 else "ak_" + "0" * 43  # missing, or well-formed but unknown
            return Request(kind, "GET", f"/recommendations/{self._user()}", key, (401,))
        if kind == "too_big_413":
            return Request(kind, "POST", "/events", app, (413,), raw_body=self.big_body)
        return Request(kind, "GET", f"/recommendations/{self.rng.choice(self.pop.users)}", self.keys["limited"],
                       (200, 429))


@dataclass
class Window:
    """Tallies of one sampling window (the client runs on one event loop: no locks)."""

    latencies: list[float] = field(default_factory=list)
    rec_latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    classes: Counter = field(default_factory=Counter)
    by_kind: Counter = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)

    def summary(self, elapsed_s: float) -> dict[str, Any]:
        ms = [x * 1000 for x in self.latencies]
        rec = [x * 1000 for x in self.rec_latencies]
        return {
            "requests": len(ms), "rps": round(len(ms) / elapsed_s, 1) if elapsed_s > 0 else 0.0,
            "p50_ms": rounded(percentile(ms, 50)), "p99_ms": rounded(percentile(ms, 99)),
            "rec_p50_ms": rounded(percentile(rec, 50)), "rec_p99_ms": rounded(percentile(rec, 99)),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=lambda kv: str(kv[0]))},
            "classes": dict(self.classes), "by_kind": dict(self.by_kind), "error_samples": self.error_samples,
        }


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class Load:
    """Open-loop load: request ``i`` is sent at ``t0 + i / rate``; latency runs from that scheduled time."""

    def __init__(self, base_url: str, maker: RequestMaker, rate: float, max_in_flight: int = 512):
        self.base_url, self.maker, self.rate = base_url, maker, rate
        self.window = Window()
        self.totals: Counter = Counter()
        self.status_totals: Counter = Counter()
        self.kind_status: Counter = Counter()
        self.error_samples: list[str] = []
        self.max_in_flight = max_in_flight
        self.stats = ScheduleStats()

    @property
    def skipped(self) -> int:
        """Sends skipped because max_in_flight requests were still open (counted, not hidden)."""
        return self.stats.skipped

    def take_window(self) -> Window:
        window, self.window = self.window, Window()
        return window

    def _request(self, n: int) -> Send:
        req = self.maker.next()
        headers = {"X-API-Key": req.key} if req.key else {}
        if req.raw_body is not None:
            headers["Content-Type"] = "application/json"
        return Send(req.method, self.base_url + req.path, json=req.body, data=req.raw_body, params=req.params,
                    headers=headers, tag=req)

    def _record(self, out: Outcome) -> None:
        req: Request = out.request.tag
        status, error = out.status, ""
        if status is None:  # refused, reset, timed out: the server under test failed to answer
            error = f"{req.kind} {req.method} {req.path} -> {out.error_text}"
        elif status >= 500 or status not in req.expected:
            error = f"{req.kind} {req.method} {req.path} -> {status}: {out.body[:160]!r}"
        cls = classify_status(status, req.expected)
        w = self.window
        w.latencies.append(out.latency)
        if req.kind == "recommend":
            w.rec_latencies.append(out.latency)
        w.statuses["transport" if status is None else status] += 1
        w.classes[cls] += 1
        w.by_kind[req.kind] += 1
        self.totals[cls] += 1
        self.status_totals["transport" if status is None else str(status)] += 1
        self.kind_status[f"{req.kind} {status if status is not None else 'transport'}"] += 1
        if error:
            if len(w.error_samples) < 5:
                w.error_samples.append(error[:300])
            if len(self.error_samples) < 20:
                self.error_samples.append(error[:300])

    async def run(self, duration_s: float, stop: asyncio.Event) -> None:
        """Send for ``duration_s`` (by schedule) or until ``stop`` is set, then wait for what is in flight."""
        from aisys.loadgen.http import client_session, send_on_schedule

        async with client_session(limit=128, timeout_s=30) as session:
            await send_on_schedule(session, self.rate, self._request, self._record, should_stop=stop.is_set,
                                   limit=math.ceil(duration_s * self.rate - 1e-9), max_in_flight=self.max_in_flight,
                                   drain_timeout_s=35, stats=self.stats)
