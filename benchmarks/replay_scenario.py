"""One replay scenario of benchmarks/replay.py: a private workspace copy, the live HTTP API, per-event hits.

The base workspace (training snapshot, the champion trained by `aisys train`'s functions -- the default model kind,
multistage -- and the dev API keys) is made once (:func:`prepare_base`); each :class:`Scenario` replays the same
rows on its own copy. Request latencies are summarised with the shared percentile helper
(:func:`aisys.loadgen.stats.latency_summary`).
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from aisys.loadgen.stats import latency_summary

K = 10

# Every scenario's serving: one replica, in-process sessions, no response cache (a cached list would hide a
# swap), limits far above what one replaying client sends, no access log, a budget a busy box cannot miss.
COMMON_OVERRIDES = (
    "serve.access_log=false",
    "serve.num_replicas=1",
    "online.session_store=memory",
    "online.exclude=seen",  # MovieLens users rate a movie once: recommending a seen one wastes a slot
    "online.latency_budget_ms=5000",
    "online.follow_alias_every_s=0.5",
    "gateway.rate_limit_backend=memory",
    "gateway.rate_limit_per_s=100000",
    "gateway.rate_limit_burst=100000",
    "gateway.cache_ttl_s=0",
    "monitor.enabled=true",
    "monitor.report_on_drift=false",  # Evidently has its own tests; here it would steal a core mid-replay
    "monitor.report_every_s=1000000000",
    "monitor.min_new_events=100000000",  # the loop's triggers are drift and hit-rate, not a data count
)
ML_OVERRIDES = (
    "features.max_seq_len=50",
    "train.epochs=8",
    "train.eval_every=2",
    "train.batch_size=64",
    "train.lr=0.002",
)
SIM_OVERRIDES = ("train.epochs=4", "train.lr=0.005", "gate.max_popularity_ratio=5.0")


def as_post(row: dict[str, Any]) -> dict[str, Any]:
    """A lake row as the body of ``POST /events``."""
    body = {k: row[k] for k in ("event_id", "user_id", "item_id", "event_type", "value")}
    body["timestamp"] = row["timestamp"].isoformat()
    body.update({k: row[k] for k in ("category", "price") if row.get(k) is not None})
    return body


# --------------------------------------------------------------------------- workspace and config


def make_config(workspace: Path, extra: tuple[str, ...] | list[str] = (), port: int | None = None):
    """The benchmark's AppConfig for ``workspace`` (defaults, then COMMON_OVERRIDES, then ``extra``)."""
    from aisys.config import load_config

    pairs = [f"paths.workspace={workspace}", *COMMON_OVERRIDES, *extra]
    if port is not None:
        pairs.append(f"serve.port={port}")
    return load_config(None, pairs, environ={})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def commit_snapshot(cfg, table: pa.Table, source: str) -> str:
    """``table`` (EVENT_SCHEMA rows) as the lake's first snapshot."""
    from datetime import datetime, timezone

    from aisys.data.lake import COUNT_KEYS, Lake, Manifest, new_snapshot_id
    from aisys.schemas import schema_hash

    lake = Lake.from_config(cfg.paths)
    snapshot_id = new_snapshot_id()
    files = lake.write_event_files(table, snapshot_id)
    counts = dict.fromkeys(COUNT_KEYS, 0) | {k: table.num_rows for k in ("input", "clean", "written", "total_rows")}
    lake.commit(Manifest(snapshot_id, None, datetime.now(timezone.utc).isoformat(), source, schema_hash(),
                         counts, [path for path, _ in files]))
    return snapshot_id


def prepare_base(workspace: Path, train: pa.Table, extra: tuple[str, ...], source: str) -> dict[str, Any]:
    """A workspace holding the training snapshot, the trained champion (Ray Train) and the dev API keys."""
    from aisys.gateway import ensure_dev_keys
    from aisys.runtime import init_ray
    from aisys.pipeline import train_and_register

    if workspace.exists():
        shutil.rmtree(workspace)
    cfg = make_config(workspace, extra)
    snapshot = commit_snapshot(cfg, train, source)
    init_ray(cfg)
    t0 = time.perf_counter()
    outcome = train_and_register(cfg, train, snapshot, promote=True)
    ensure_dev_keys(cfg)
    return {"snapshot_id": snapshot, "version": outcome.model_version, "train_rows": train.num_rows,
            "train_s": round(time.perf_counter() - t0, 1), "offline": outcome.metrics,
            "model_kind": outcome.bundle.model_kind}


# --------------------------------------------------------------------------- one scenario


@dataclass
class ScenarioResult:
    name: str
    users: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    hits: list[bool] = field(default_factory=list)
    versions: list[str | None] = field(default_factory=list)
    fallbacks: int = 0
    errors: int = 0
    retrains: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    requests_at: list[int] = field(default_factory=list)  # events replayed when the loop asked for a retrain
    request_s: list[float] = field(default_factory=list)  # seconds of each GET /recommendations

    def save(self, path: Path, key: dict[str, Any]) -> None:
        """Per-event results, to be reused by a later run with the same ``key`` (``--reuse``)."""
        from dataclasses import asdict

        path.write_text(json.dumps({"key": key, "result": asdict(self)}, default=str))

    @classmethod
    def load(cls, path: Path, key: dict[str, Any]) -> "ScenarioResult | None":
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(**data["result"]) if data.get("key") == json.loads(json.dumps(key, default=str)) else None

    def summary(self) -> dict[str, Any]:
        promoted = [r for r in self.retrains if r.get("promoted")]
        return {
            "events": len(self.hits), "hr@10": float(np.mean(self.hits)) if self.hits else float("nan"),
            "retrains": len(self.retrains), "promoted": len(promoted),
            "retrain_s": round(sum(r.get("seconds", 0.0) for r in self.retrains), 1),
            "fallbacks": self.fallbacks, "errors": self.errors, "wall_s": round(self.wall_s, 1),
            "get_latency": latency_summary(self.request_s),
        }


class Scenario:
    """One replay on a private copy of the base workspace (same lake, registry and champion)."""

    def __init__(self, name: str, base: Path, root: Path, extra: tuple[str, ...], promote: str = "gate") -> None:
        self.name = name
        self.promote = promote  # "gate": the gate decides; "always": a refused candidate is made champion anyway
        self.workspace = root / name
        if self.workspace.exists():
            shutil.rmtree(self.workspace)
        shutil.copytree(base, self.workspace, ignore=shutil.ignore_patterns("ray_results", "collector"))
        self.cfg = make_config(self.workspace, extra, port=free_port())

    def run(self, rows: list[dict[str, Any]], *, post: bool = True, retrain_every: int | None = None,
            loop_check_every: int | None = None, on_progress: Callable[[int], None] | None = None) -> ScenarioResult:
        """Replay ``rows``; retrain every ``retrain_every`` events, or poll the loop every ``loop_check_every``."""
        import httpx

        from aisys.gateway import ensure_dev_keys, read_dev_keys
        from aisys.loop.controller import RetrainController
        from aisys.monitoring.monitor_actor import get_or_create
        from aisys.serving.app import start_serving, stop_serving

        cfg = self.cfg
        key = (ensure_dev_keys(cfg) or read_dev_keys(cfg))["dev-admin"]
        result = ScenarioResult(self.name)
        monitor = get_or_create(cfg) if (retrain_every or loop_check_every) else None
        controller = RetrainController(cfg, submit="inline", monitor=monitor) if monitor is not None else None
        url = start_serving(cfg)
        started = time.perf_counter()
        memo: dict[str, dict] = {}
        try:
            with httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": key}) as client:
                for i, row in enumerate(rows):
                    user = row["user_id"]
                    body = memo.get(user) if not post else None
                    if body is None:
                        asked = time.perf_counter()
                        resp = client.get(f"/recommendations/{user}", params={"k": K})
                        result.request_s.append(time.perf_counter() - asked)
                        if resp.status_code != 200:
                            result.errors += 1
                            body = {"items": [], "fallback": True, "model_version": None}
                        else:
                            body = resp.json()
                        if not post:
                            memo[user] = body
                    result.users.append(user)
                    result.items.append(row["item_id"])
                    result.hits.append(row["item_id"] in {it["item_id"] for it in body["items"]})
                    result.versions.append(body.get("model_version"))
                    result.fallbacks += bool(body.get("fallback"))
                    if post:
                        resp = client.post("/events", json=as_post(row))
                        result.errors += resp.status_code != 202
                    done = i + 1
                    if done == len(rows):
                        break
                    if retrain_every and done % retrain_every == 0:
                        record = controller.request_retrain(f"periodic: every {retrain_every} events")
                        result.retrains.append(self._after_retrain(client, record, done))
                    if loop_check_every and done % loop_check_every == 0:
                        self._wait_for_monitor(monitor, done)
                        record = controller.poll_once()
                        if record is not None:
                            result.requests_at.append(done)
                            result.retrains.append(self._after_retrain(client, record, done))
                    if on_progress and done % 1000 == 0:
                        on_progress(done)
        finally:
            result.wall_s = time.perf_counter() - started
            stop_serving(cfg)
        return result

    @staticmethod
    def _wait_for_monitor(monitor, posted: int, timeout_s: float = 15.0) -> None:
        """Until the monitor has seen every posted event (the replica forwards within about a second)."""
        import ray

        deadline = time.monotonic() + timeout_s
        while ray.get(monitor.status.remote())["events_seen"] < posted and time.monotonic() < deadline:
            time.sleep(0.1)

    def _after_retrain(self, client, record, at: int, timeout_s: float = 180.0) -> dict[str, Any]:
        """Wait until the replica serves the new version (promoted, or forced); what the retrain did, as JSON."""
        from aisys.registry.mlflow_registry import set_alias

        t0 = time.perf_counter()
        outcome = record.outcome or {}
        forced = False
        if self.promote == "always" and not record.promoted and outcome.get("new_version"):
            # Blind deployment: the gate's refusal is recorded, the alias moves anyway. The monitor keeps its
            # reference (the loop hands a new one over only on a gated promotion).
            set_alias(self.cfg, self.cfg.registry.champion_alias, outcome["new_version"])
            forced = True
        version = outcome.get("new_version") if (record.promoted or forced) else None
        if version is not None:
            deadline = time.monotonic() + timeout_s
            while client.get("/model").json().get("version") != version:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the replica did not serve version {version} within {timeout_s} s")
                time.sleep(0.2)
        seconds = dict(record.seconds)
        return {
            "at_event": at, "triggers": (record.request or {}).get("triggers"),
            "promoted": record.promoted or forced, "gate_promoted": record.promoted, "forced": forced,
            "new_version": outcome.get("new_version"), "error": record.error,
            "gate_reasons": outcome.get("reasons"), "train_events": outcome.get("train_events"),
            "seconds": round(sum(v for v in seconds.values() if isinstance(v, (int, float)))
                             if "total" not in seconds else seconds["total"], 1),
            "follow_s": round(time.perf_counter() - t0, 1), "detail_s": seconds,
        }
