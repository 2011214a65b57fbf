"""`aisys demo`: the whole loop on the embedded defaults, then a summary.

data -> raw file with injected faults -> ingest (Ray Data) -> train (Ray Train)
-> register (MLflow, alias champion) -> serve (Ray Serve) -> live traffic over
HTTP -> summary -> clean shutdown.

The last ``demo.n_events`` events of the source are held back from the raw file
and replayed over HTTP as live traffic: before each one, the demo asks for the
user's recommendations and checks whether the item the user then touched was
among them (a prequential hit-rate), then posts the event.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from aisys.config import AppConfig


def split_live_tail(events: pa.Table, n_live: int) -> tuple[pa.Table, pa.Table]:
    """Split time-ordered events into (history for the lake, the last ``n_live`` for live replay)."""
    order = pc.sort_indices(events, sort_keys=[("timestamp", "ascending"), ("event_id", "ascending")])
    events = events.take(order)
    n_live = min(n_live, max(events.num_rows - 1, 0))
    cut = events.num_rows - n_live
    return events.slice(0, cut), events.slice(cut)


def latency_percentiles(latencies_s: list[float]) -> dict[str, float]:
    """p50/p90/p99 in milliseconds (NaN when nothing was measured): the shared helper, :mod:`aisys.loadgen.stats`."""
    from aisys.loadgen.stats import QUANTILES, percentile

    return {f"p{q}_ms": float("nan") if not latencies_s else percentile(latencies_s, q) * 1000.0 for q in QUANTILES}


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    from aisys.runtime.ingress import free_tcp_port

    return free_tcp_port(host)


def _live_event(row: dict[str, Any]) -> dict[str, Any]:
    """A lake row as the JSON body of ``POST /events``."""
    event = {key: row[key] for key in ("event_id", "user_id", "item_id", "event_type", "value")}
    event["timestamp"] = row["timestamp"].isoformat()
    event.update({key: row[key] for key in ("category", "price") if row.get(key) is not None})
    return event


MAX_RETRIES_PER_REQUEST = 8
LONGEST_RETRY_WAIT_S = 30.0


class TrafficClient:
    """Sends the demo's requests, waits out ``429`` answers as ``Retry-After`` asks, and counts every answer.

    A rate-limited answer is the gateway doing its job, not a failure: the client waits the seconds the
    answer names and asks again (at most ``MAX_RETRIES_PER_REQUEST`` times). Only a final answer that is
    not a success counts as an error, and the first few are kept so a failed demo can say what failed.
    ``sleep`` is injectable so tests can drive a fake clock.
    """

    def __init__(self, client, sleep: Callable[[float], None] = time.sleep, keep_failures: int = 5) -> None:
        self.client = client
        self.sleep = sleep
        self.keep_failures = keep_failures
        self.status_counts: Counter[str] = Counter()
        self.retried = 0
        self.waited_s = 0.0
        self.errors = 0
        self.failures: list[str] = []

    def send(self, method: str, path: str, **kwargs):
        for attempt in range(MAX_RETRIES_PER_REQUEST + 1):
            resp = self.client.request(method, path, **kwargs)
            self.status_counts[str(resp.status_code)] += 1
            if resp.status_code != 429 or attempt == MAX_RETRIES_PER_REQUEST:
                break
            wait = retry_after_seconds(resp.headers.get("Retry-After"))
            self.retried += 1
            self.waited_s += wait
            self.sleep(wait)
        if not resp.is_success:
            self.errors += 1
            if len(self.failures) < self.keep_failures:
                self.failures.append(f"{method} {path} -> {resp.status_code} {resp.text[:200]}")
        return resp


def retry_after_seconds(header: str | None) -> float:
    """The wait a ``Retry-After`` header asks for (delta-seconds), bounded; 1 s when absent or unreadable."""
    try:
        wait = float(header) if header is not None else 1.0
    except ValueError:
        wait = 1.0
    return min(max(wait, 0.0), LONGEST_RETRY_WAIT_S)


def replay_live_traffic(
    base_url: str,
    live: pa.Table,
    n_requests: int,
    k: int = 10,
    api_key: str | None = None,
    client=None,
    sleep: Callable[[float], None] = time.sleep,
    on_request: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Replay live events over HTTP and measure latency, answers by status, fallbacks and the prequential hit-rate.

    ``api_key`` is sent as ``X-API-Key`` (the gateway's admin or a recommend+events key). ``client`` is an
    ``httpx.Client``-like object to send through instead of a new one on ``base_url`` (tests pass an ASGI client).
    Latency is measured per answered request, waits for ``Retry-After`` excluded. ``on_request(done, total)`` is
    told after each request (a progress bar).
    """
    import httpx

    latencies: list[float] = []
    fallbacks = 0

    def recommend(traffic: TrafficClient, user_id: str) -> dict[str, Any] | None:
        nonlocal fallbacks
        started = time.perf_counter()
        before = traffic.waited_s
        resp = traffic.send("GET", f"/recommendations/{user_id}", params={"k": k})
        latencies.append(max(time.perf_counter() - started - (traffic.waited_s - before), 0.0))
        if not resp.is_success:
            return None
        body = resp.json()
        fallbacks += bool(body.get("fallback"))
        return body

    hits = scored = sent_events = accepted_events = 0
    rows = live.to_pylist()
    headers = {"X-API-Key": api_key} if api_key else {}
    own_client = client is None
    http = httpx.Client(base_url=base_url, timeout=30.0, headers=headers) if own_client else client
    if not own_client:
        http.headers.update(headers)
    traffic = TrafficClient(http, sleep=sleep)
    total = 2 * live.num_rows + n_requests + 2
    tick = on_request or (lambda done, total: None)
    try:
        for row in rows:
            body = recommend(traffic, row["user_id"])
            if body is not None:
                scored += 1
                hits += row["item_id"] in {it["item_id"] for it in body["items"]}
            accepted_events += traffic.send("POST", "/events", json=_live_event(row)).is_success
            sent_events += 1
            tick(2 * sent_events, total)
        # Requests beyond the replay: known users again, and every fifth an unknown visitor (the fallback path).
        users = [r["user_id"] for r in rows] or ["u0"]
        for i in range(n_requests):
            recommend(traffic, users[i % len(users)] if i % 5 else f"new-visitor-{i}")
            tick(2 * sent_events + i + 1, total)
        model_resp = traffic.send("GET", "/model")
        health_resp = traffic.send("GET", "/healthz")
        tick(total, total)
    finally:
        if own_client:
            http.close()
    return {
        "requests": len(latencies),
        "events_posted": sent_events,
        "events_accepted": accepted_events,
        "errors": traffic.errors,
        "failures": traffic.failures,
        "answers_by_status": dict(sorted(traffic.status_counts.items())),
        "rate_limited_retries": traffic.retried,
        "rate_limited_wait_s": round(traffic.waited_s, 1),
        "fallback_responses": fallbacks,
        "online_hr@10": hits / scored if scored else float("nan"),
        "model": model_resp.json() if model_resp.is_success else {},
        "health": health_resp.json() if health_resp.is_success else {},
        **latency_percentiles(latencies),
    }


def _demo_api_key(cfg: AppConfig) -> str | None:
    """The local dev admin key (created on first use), or None when the gateway's auth is off."""
    if not cfg.gateway.auth:
        return None
    from aisys.gateway import ensure_dev_keys, read_dev_keys

    keys = ensure_dev_keys(cfg) or read_dev_keys(cfg)
    if "dev-admin" not in keys:
        raise RuntimeError(
            f"the workspace {cfg.paths.workspace} has API keys but no local dev keys file: "
            "run the demo in a fresh workspace, or set gateway.auth=false for a local run"
        )
    return keys["dev-admin"]


def run_demo(cfg: AppConfig, console=None) -> dict[str, Any]:
    """Run every stage end to end on ``cfg`` and return (and print) the summary."""
    from rich.console import Console

    from aisys import pipeline
    from aisys.data.lake import Lake
    from aisys.runtime import init_ray

    console = console or Console()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    workspace = Path(cfg.paths.workspace)
    workspace.mkdir(parents=True, exist_ok=True)

    def step(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 1)
        console.print(f"[green]✓[/] {name} ({timings[name]} s)")

    t0 = time.perf_counter()
    with console.status(f"1/5 generating events ({cfg.data.source}) ..."):
        events = pipeline.source_events(cfg)
        history, live = split_live_tail(events, cfg.demo.n_events)
        raw = pipeline.generate_raw_events(
            cfg, bad_share=cfg.demo.bad_row_share, duplicate_share=cfg.demo.duplicate_share, table=history
        )
    step("data", t0)

    t0 = time.perf_counter()
    console.print("2/5 ingesting on Ray Data ...")
    init_ray(cfg)
    manifest = pipeline.ingest(cfg, [raw.path], source=f"demo:{cfg.data.source}")
    step("ingest", t0)

    t0 = time.perf_counter()
    console.print("3/5 training on Ray Train and registering in MLflow ...")
    outcome = pipeline.train_from_lake(cfg, manifest.snapshot_id)
    step("train+register", t0)

    from aisys.serving.app import start_serving, stop_serving

    if not _port_is_free(cfg.serve.host, cfg.serve.port):
        port = _free_port(cfg.serve.host)
        console.print(f"port {cfg.serve.port} is busy; serving on {port} instead")
        cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"port": port})})
    # The demo prints its own summary: per-request access lines would bury it.
    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"access_log": False})})
    api_key = _demo_api_key(cfg)
    t0 = time.perf_counter()
    with console.status("4/5 starting Ray Serve ..."):
        base_url = start_serving(cfg)
    step("serve start", t0)

    t0 = time.perf_counter()
    try:
        from aisys.progress import StageProgress

        console.print(f"5/5 live traffic over HTTP: {live.num_rows} events, each after a recommendation request")
        with StageProgress(console, "aisys demo", "request", None) as bar:
            traffic = replay_live_traffic(base_url, live, cfg.demo.n_requests, api_key=api_key,
                                          on_request=lambda done, total: bar.update(done, total=total))
        step("live traffic", t0)
    finally:
        stop_serving(cfg)
        import ray

        ray.shutdown()

    c = manifest.counts
    summary: dict[str, Any] = {
        "ok": not demo_problems(traffic),
        "problems": demo_problems(traffic),
        "source": cfg.data.source,
        "raw_rows": raw.rows,
        "injected_bad_rows": raw.bad_rows,
        "injected_duplicates": raw.duplicate_rows,
        "snapshot_id": manifest.snapshot_id,
        "ingest_counts": dict(c),
        "lake_snapshots": len(Lake.from_config(cfg.paths).list_snapshots()),
        "offline_model": outcome.metrics,
        "offline_popularity": outcome.baseline_metrics,
        "model_name": outcome.model_name,
        "model_version": outcome.model_version,
        "run_id": outcome.run_id,
        "serving": traffic,
        "timings_s": timings,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    (workspace / "demo-summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print_summary(summary, console)
    return summary


def demo_problems(traffic: dict[str, Any]) -> list[str]:
    """What went wrong in the live traffic, one line each; empty when the demo succeeded.

    Rate-limited answers that a retry then got through are expected (the gateway protecting itself) and
    are not problems; a request that still failed is.
    """
    problems = []
    if traffic["errors"]:
        by_status = ", ".join(f"{n} x {code}" for code, n in traffic["answers_by_status"].items() if not code.startswith("2"))
        problems.append(f"{traffic['errors']} requests failed after retries (answers: {by_status})")
        problems.extend(f"  e.g. {line}" for line in traffic["failures"])
    if traffic["events_accepted"] != traffic["events_posted"]:
        problems.append(f"{traffic['events_posted'] - traffic['events_accepted']} of {traffic['events_posted']} events were not accepted")
    if traffic.get("health", {}).get("status") != "ok":
        problems.append(f"/healthz did not answer ok: {traffic.get('health')}")
    return problems


def print_summary(s: dict[str, Any], console) -> None:
    """Print the demo summary as one table."""
    from rich.table import Table

    c, srv = s["ingest_counts"], s["serving"]
    m, p = s["offline_model"], s["offline_popularity"]
    table = Table(title="aisys demo summary", show_header=False)
    table.add_row("raw rows (injected bad / duplicates)", f"{s['raw_rows']:,} ({s['injected_bad_rows']} / {s['injected_duplicates']})")
    table.add_row(
        "ingested: written / quarantined / duplicates",
        f"{c.get('written', 0):,} / {c.get('quarantined', 0):,} / "
        f"{c.get('duplicates_in_batch', 0) + c.get('duplicates_in_lake', 0):,}  (snapshot {s['snapshot_id']})",
    )
    table.add_row("offline HR@10 model vs popularity", f"{m.get('hr@10', float('nan')):.4f} vs {p.get('hr@10', float('nan')):.4f}")
    table.add_row("offline NDCG@10 model vs popularity", f"{m.get('ndcg@10', float('nan')):.4f} vs {p.get('ndcg@10', float('nan')):.4f}")
    table.add_row("model", f"{s['model_name']} v{s['model_version']} (champion)")
    table.add_row("requests / events posted / errors", f"{srv['requests']} / {srv['events_posted']} / {srv['errors']}")
    answers = ", ".join(f"{code}: {n}" for code, n in srv["answers_by_status"].items())
    table.add_row("answers by status", answers)
    table.add_row("rate-limited, retried after Retry-After", f"{srv['rate_limited_retries']} ({srv['rate_limited_wait_s']} s waited)")
    table.add_row("latency p50 / p99", f"{srv['p50_ms']:.1f} ms / {srv['p99_ms']:.1f} ms")
    table.add_row("online HR@10 on live replay", f"{srv['online_hr@10']:.3f}")
    table.add_row("fallback responses", str(srv["fallback_responses"]))
    table.add_row("wall time", f"{s['wall_s']} s")
    console.print(table)
    if s["problems"]:
        console.print("[red]the demo failed:[/]")
        for line in s["problems"]:
            console.print(f"[red]{line}[/]")
