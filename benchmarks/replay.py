"""Prequential replay benchmark (issue 5, item 6): what live features, retraining and the drift loop are worth.

MovieLens-100K is replayed in time order through the live HTTP API (Ray Serve + gateway, one replica):
before each event, the user's top-10 is requested (``GET /recommendations/{user}``), then the event is
posted (``POST /events``). A hit is the posted item being in the list requested just before it.

The initial SASRec is trained (Ray Train) on the first ``--train-share`` of the interactions by time and
registered as champion; the next ``--events`` interactions are replayed, the same rows in every scenario:

(a) ``frozen``       the champion, and every user's history frozen at training time. Events are not posted
                     at all (the least invasive switch: the session store then holds exactly the snapshot's
                     histories), which is what a nightly batch of precomputed lists gives. Nothing the server
                     holds changes during (a), so each user's list is requested once and reused (the same
                     answer a request per event would get, at half the HTTP cost).
(b) ``live``         the same champion with live session features (normal serving: the posted event enters the
                     user's session and the "seen" exclusion at once).
(c) ``every_N``      (b) + a blind periodic retrain every N events: the replay pauses, the controller ingests
                     the collector's files into a new lake snapshot, retrains on all of it, the gate decides,
                     and the replay resumes once the replica serves the new champion (alias following).
(d) ``loop``         (b) + the drift-triggered loop: the replica feeds the monitor actor; every
                     ``--check-every`` events (once the monitor has seen every posted event) the controller
                     polls it, and a retrain request is answered like (c).

Retrains are synchronous (traffic waits), so every scenario sees the same events in the same model state
it would have with instant retraining; wall time includes them.

A second scenario replays the simulator with a taste shift and new items from its midpoint: the live
model and the loop, each measured on the same events; it reports events from onset to detection, seconds
from the decision to the new version serving, and a rolling hit-rate plot (``replay_recovery.png``).

    python benchmarks/replay.py                      # ML-100K (a)-(d) + the simulator; ~tens of minutes on 2 cores
    python benchmarks/replay.py --events 3000 --periods 1000 --skip-sim
    python benchmarks/replay.py --only-sim

Prints tables and writes ``benchmarks/results/replay.json`` (+ the PNG).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from aisys.loop.replay import (
    bootstrap_capture,
    paired_bootstrap,
    per_user_hit_rates,
    rolling_mean,
    split_train_replay,
    time_sorted,
)

RESULTS = Path(__file__).resolve().parent / "results"
K = 10
ML_PATH = "/tmp/mlcache/ml-100k"

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
    from aisys.training.pipeline import train_and_register

    if workspace.exists():
        shutil.rmtree(workspace)
    cfg = make_config(workspace, extra)
    snapshot = commit_snapshot(cfg, train, source)
    init_ray(cfg)
    t0 = time.perf_counter()
    outcome = train_and_register(cfg, train, snapshot, promote=True)
    ensure_dev_keys(cfg)
    return {"snapshot_id": snapshot, "version": outcome.model_version, "train_rows": train.num_rows,
            "train_s": round(time.perf_counter() - t0, 1), "offline": outcome.metrics}


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
                        resp = client.get(f"/recommendations/{user}", params={"k": K})
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


# --------------------------------------------------------------------------- MovieLens scenarios


def ml_loop_overrides(budget: int, check_every: int) -> tuple[str, ...]:
    """The drift-triggered loop's monitor settings on the ML-100K replay (see docs/loop.md)."""
    return (
        "monitor.window_events=1000",
        f"monitor.check_every_events={check_every}",
        "monitor.psi_threshold=0.2",
        "monitor.drift_consecutive_checks=3",
        "monitor.hit_rate_min_lists=200",
        "monitor.hit_rate_window_lists=500",
        "monitor.hit_rate_drop=0.2",
        "monitor.cooldown_s=0",
        f"monitor.max_retrains_per_day={budget}",
    )


def run_movielens(args, root: Path, log: Callable[[str], None]) -> dict[str, Any]:
    from aisys.data.movielens import load_movielens
    from aisys.config import MovieLensConfig

    events = load_movielens(MovieLensConfig(path=args.movielens_path), str(root / "cache"))
    train, replay = split_train_replay(events, args.train_share, args.events)
    extra = (*ML_OVERRIDES, *args.set)
    base = root / "ml-base"
    log(f"ML-100K: {events.num_rows} interactions; train on the first {train.num_rows} "
        f"({args.train_share:.0%}), replay the next {replay.num_rows} ({replay.num_rows / events.num_rows:.1%})")
    base_json = root / "ml-base.json"
    key = {"train_rows": train.num_rows, "extra": list(extra)}
    base_info = None
    if args.reuse and base_json.exists() and json.loads(base_json.read_text()).get("key") == key:
        base_info = json.loads(base_json.read_text())["info"]
        log(f"reusing the trained base workspace {base}")
    if base_info is None:
        base_info = prepare_base(base, train, extra, "movielens")
        base_json.write_text(json.dumps({"key": key, "info": base_info}))
    log(f"initial champion v{base_info['version']} trained in {base_info['train_s']} s; "
        f"offline {json.dumps({k: round(v, 4) for k, v in base_info['offline'].items()})}")
    rows = replay.to_pylist()
    known_items = set(train.column("item_id").to_pylist())

    plan: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
        ("a_frozen", {"post": False}, ()),
        ("b_live", {}, ()),
        *[(f"c_every_{n}", {"retrain_every": n}, ()) for n in args.periods],
    ]
    smallest = min(args.periods) if args.periods else 1000
    budget = args.loop_budget if args.loop_budget is not None else max(1, (len(rows) // smallest) // 4)
    plan.append(("d_loop", {"loop_check_every": args.check_every}, ml_loop_overrides(budget, args.check_every)))
    if args.only:
        plan = [p for p in plan if p[0] in args.only or p[0] == "b_live"]

    results: dict[str, ScenarioResult] = {}
    for name, kwargs, more in plan:
        promote = {"retrain_every": args.promote, "loop_check_every": args.loop_promote}
        promote = next((promote[k] for k in promote if k in kwargs), "gate")
        key = {"base": base_info["snapshot_id"], "events": len(rows), "kwargs": kwargs, "extra": [*extra, *more],
               "promote": promote}
        cached = root / f"{name}.result.json"
        res = ScenarioResult.load(cached, key) if args.reuse else None
        if res is not None:
            log(f"-- scenario {name}: reusing {cached}")
        else:
            log(f"-- scenario {name} ...")
            scen = Scenario(name, base, root, (*extra, *more), promote=promote)
            res = scen.run(rows, on_progress=lambda n: log(f"   {name}: {n} events"), **kwargs)
            res.save(cached, key)
        results[name] = res
        s = res.summary()
        log(f"   {name}: HR@10 {s['hr@10']:.4f}, retrains {s['retrains']} ({s['promoted']} promoted), "
            f"wall {s['wall_s']} s, errors {s['errors']}, fallbacks {s['fallbacks']}")
    known_users = set(train.column("user_id").to_pylist())
    return summarise_movielens(results, base_info, events.num_rows, train.num_rows, known_items, known_users,
                               budget, args)


def summarise_movielens(results: dict[str, ScenarioResult], base_info, n_total, n_train, known_items,
                        known_users, budget, args) -> dict[str, Any]:
    base = results["b_live"]
    order, base_hr = per_user_hit_rates(base.users, base.hits)
    table = {}
    per_user = {}
    for name, res in results.items():
        assert res.users == base.users, f"{name} replayed different events"
        _, hr = per_user_hit_rates(res.users, res.hits, order)
        per_user[name] = hr
        row = res.summary()
        row["hr@10_user_avg"] = float(hr.mean())
        new_hits = sum(h for h, item in zip(res.hits, res.items) if h and item not in known_items)
        row["hits_on_new_items"] = int(new_hits)
        row["hits"] = int(sum(res.hits))
        # Users who signed up after the training cut are cold in (a) for good: split them out.
        for label, keep in (("known_users", True), ("new_users", False)):
            sel = [h for h, u in zip(res.hits, res.users) if (u in known_users) == keep]
            row[f"hr@10_{label}"] = float(np.mean(sel)) if sel else float("nan")
            row[f"events_{label}"] = len(sel)
        if name != "b_live":
            row["gain_vs_b"] = paired_bootstrap(base_hr, hr, n_boot=args.n_boot)
        row["retrain_log"] = res.retrains
        row["loop_requests_at"] = res.requests_at
        table[name] = row
    out: dict[str, Any] = {
        "dataset": "MovieLens-100K", "interactions": n_total, "train_rows": n_train,
        "replayed": len(base.hits), "replayed_share": len(base.hits) / n_total, "users": len(order),
        "new_items_in_replay": len({i for i in base.items if i not in known_items}),
        "events_on_new_items": sum(i not in known_items for i in base.items),
        "initial_model": base_info, "loop_budget": budget, "scenarios": table,
    }
    full = f"c_every_{min(args.periods)}" if args.periods else None
    if full in per_user and "d_loop" in per_user:
        out["d_capture_of_c"] = bootstrap_capture(base_hr, per_user[full], per_user["d_loop"], n_boot=args.n_boot)
        out["d_capture_of_c"]["vs"] = full
        out["d_retrain_share_of_c"] = (table["d_loop"]["retrains"] / table[full]["retrains"]
                                       if table[full]["retrains"] else float("nan"))
        gain_c = table[full]["hits"] - table["b_live"]["hits"]
        new_c = table[full]["hits_on_new_items"] - table["b_live"]["hits_on_new_items"]
        out["c_gain_share_from_new_items"] = new_c / gain_c if gain_c else float("nan")
    return out


# --------------------------------------------------------------------------- simulator scenario

SIM = dict(n_users=200, n_items=100, n_sessions=1200, days=10, seed=5, taste_shift=1.0, new_items=20)
# A 300-event window (the e2e test's) raised 3 false alarms in the pre-shift replay (category PSI up to 1.1: a few
# category-focused sessions fill a small window), spending the budget before the shift: 1,000 events, 3 checks.
SIM_CHECK_EVERY = 250
SIM_LOOP = (
    "monitor.window_events=1000",
    f"monitor.check_every_events={SIM_CHECK_EVERY}",
    "monitor.psi_threshold=0.2",
    "monitor.drift_consecutive_checks=3",
    "monitor.cooldown_s=0",
    "monitor.max_retrains_per_day=3",
)


def run_simulator(args, root: Path, log: Callable[[str], None]) -> dict[str, Any]:
    from aisys.config import SimulatorConfig
    from aisys.data.simulator import drift_midpoint, simulate_events

    spec = {**SIM, "n_sessions": args.sim_sessions}
    sim = SimulatorConfig(**spec)
    events = time_sorted(simulate_events(sim))
    mid = drift_midpoint(sim)
    ts = events.column("timestamp").to_pylist()
    n_pre = sum(t < mid for t in ts)
    n_train = int(n_pre * args.sim_train_share)
    train, replay = events.slice(0, n_train), events.slice(n_train)
    rows = replay.to_pylist()
    onset = n_pre - n_train  # replay index of the first shifted event
    extra = (*SIM_OVERRIDES, *args.set)
    base = root / "sim-base"
    log(f"simulator {spec}: {events.num_rows} events; train {n_train}, replay {len(rows)} "
        f"({onset} before the shift, {len(rows) - onset} after)")
    info = prepare_base(base, train, extra, "simulator")
    runs: dict[str, ScenarioResult] = {}
    for name, kwargs, more in (("sim_live", {}, ()), ("sim_loop", {"loop_check_every": SIM_CHECK_EVERY}, SIM_LOOP)):
        log(f"-- scenario {name} ...")
        runs[name] = Scenario(name, base, root, (*extra, *more), promote=args.sim_promote).run(rows, **kwargs)
        s = runs[name].summary()
        log(f"   {name}: HR@10 {s['hr@10']:.4f}, retrains {s['retrains']}, wall {s['wall_s']} s")
    loop = runs["sim_loop"]
    window = args.sim_window
    pre = float(np.mean(loop.hits[:onset]))
    out: dict[str, Any] = {"simulator": spec, "events": events.num_rows, "train_rows": n_train,
                           "replayed": len(rows), "onset_index": onset, "initial_model": info,
                           "pre_shift_hr@10": pre, "window": window,
                           "scenarios": {n: {**r.summary(), "retrain_log": r.retrains} for n, r in runs.items()}}
    # A request before the onset is a false alarm; detection is the first request at or after it.
    out["loop_requests_at"] = loop.requests_at
    out["false_alarms_before_onset"] = sum(at < onset for at in loop.requests_at)
    detected = next((at for at in loop.requests_at if at >= onset), None)
    if detected is not None:
        out["events_onset_to_detection"] = detected - onset
    first = next((r for r in loop.retrains if r.get("promoted") and r["at_event"] >= onset), None)
    out["pre_shift_hr@10_live_only"] = float(np.mean(runs["sim_live"].hits[:onset]))
    if first is not None:
        served_at = first["at_event"]
        after = loop.hits[served_at:]
        live_after = runs["sim_live"].hits[served_at:]
        out.update({
            "decision_to_serving_s": round(first["seconds"] + first["follow_s"], 1),
            "promoted_version": first["new_version"],
            "post_promotion_hr@10": float(np.mean(after)) if after else float("nan"),
            "post_promotion_hr@10_live_only": float(np.mean(live_after)) if live_after else float("nan"),
            "last_window_hr@10": float(np.mean(loop.hits[-window:])),
            "recovery_share": float(np.mean(loop.hits[-window:])) / pre if pre else float("nan"),
            "live_only_last_window_share": float(np.mean(runs["sim_live"].hits[-window:])) / pre if pre else float("nan"),
        })
    out["plot"] = str(plot_recovery(runs, onset, first, window, Path(args.out).with_name("replay_recovery.png")))
    return out


def plot_recovery(runs: dict[str, ScenarioResult], onset: int, first: dict | None, window: int, path: Path) -> Path:
    """Rolling HR@10 of each simulator run, with the onset and the promotion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = {"sim_live": "live features, frozen model", "sim_loop": "drift-triggered loop"}
    for name, res in runs.items():
        ax.plot(rolling_mean(res.hits, window), label=labels.get(name, name))
    ax.axvline(onset, color="red", linestyle="--", label="taste shift + new items")
    if first is not None:
        ax.axvline(first["at_event"], color="green", linestyle=":", label=f"v{first['new_version']} serving")
    ax.set_xlabel("replayed events")
    ax.set_ylabel(f"HR@10, rolling {window} events")
    ax.set_title("Simulator: online hit-rate through a shift")
    ax.legend(loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- output


def print_tables(out: dict[str, Any]) -> None:
    ml = out.get("movielens")
    if ml:
        print(f"\nML-100K prequential replay: {ml['replayed']} events ({ml['replayed_share']:.1%} of the data, "
              f"{ml['users']} users) after training on {ml['train_rows']}")
        print(f"{'scenario':<16}{'HR@10':>8}{'user HR':>9}{'gain vs b (95% CI)':>32}{'retrains':>10}"
              f"{'promoted':>9}{'retrain s':>10}{'wall s':>8}")
        for name, s in ml["scenarios"].items():
            g = s.get("gain_vs_b")
            gain = f"{g['rel']:+.1%} [{g['rel_lo']:+.1%}, {g['rel_hi']:+.1%}]" if g else "-"
            print(f"{name:<16}{s['hr@10']:>8.4f}{s['hr@10_user_avg']:>9.4f}{gain:>32}{s['retrains']:>10}"
                  f"{s['promoted']:>9}{s['retrain_s']:>10}{s['wall_s']:>8}")
        if "d_capture_of_c" in ml:
            c = ml["d_capture_of_c"]
            print(f"(d) captures {c['share']:.0%} [{c['share_lo']:.0%}, {c['share_hi']:.0%}] of {c['vs']}'s gain "
                  f"with {ml['d_retrain_share_of_c']:.0%} of its retrains; "
                  f"share of that gain from items new since training: {ml['c_gain_share_from_new_items']:.0%}")
    sim = out.get("simulator")
    if sim:
        print(f"\nSimulator shift ({sim['replayed']} events replayed, onset at {sim['onset_index']}):")
        for key in ("pre_shift_hr@10", "pre_shift_hr@10_live_only", "false_alarms_before_onset",
                    "events_onset_to_detection", "decision_to_serving_s",
                    "post_promotion_hr@10", "post_promotion_hr@10_live_only", "last_window_hr@10",
                    "recovery_share", "live_only_last_window_share"):
            if key in sim:
                val = sim[key]
                print(f"  {key:<34}{val:.4f}" if isinstance(val, float) else f"  {key:<34}{val}")
        for name, s in sim["scenarios"].items():
            print(f"  {name}: HR@10 {s['hr@10']:.4f}, retrains {s['retrains']}, errors {s['errors']}, wall {s['wall_s']} s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="replayed ML-100K interactions (cap)")
    parser.add_argument("--train-share", type=float, default=0.5, help="share of interactions (by time) trained on")
    parser.add_argument("--periods", type=int, nargs="*", default=[1000, 5000], help="(c): retrain every N events")
    parser.add_argument("--check-every", type=int, default=250, help="(d): poll the loop every N events")
    parser.add_argument("--loop-budget", type=int, default=None,
                        help="(d): monitor.max_retrains_per_day; default a quarter of (c)'s smallest period's count")
    parser.add_argument("--only", nargs="*", default=None, help="ML scenarios to run (b_live always runs)")
    parser.add_argument("--movielens-path", default=ML_PATH)
    parser.add_argument("--promote", choices=("gate", "always"), default="always",
                        help="(c): 'always' deploys every retrained model (the blind periodic retrain); 'gate': "
                             "only what the gate promotes")
    parser.add_argument("--loop-promote", choices=("gate", "always"), default="gate",
                        help="(d): 'gate' (the loop as it runs in production) or 'always' (every retrain deployed)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the trained base and scenario results in --workdir made with the same settings")
    parser.add_argument("--sim-train-share", type=float, default=0.6, help="share of the pre-shift events trained on")
    parser.add_argument("--sim-sessions", type=int, default=SIM["n_sessions"], help="simulated sessions")
    parser.add_argument("--sim-promote", choices=("gate", "always"), default="gate",
                        help="simulator loop: the gate decides (default), or every retrain is deployed")
    parser.add_argument("--sim-window", type=int, default=300, help="rolling window of the recovery plot")
    parser.add_argument("--skip-sim", action="store_true")
    parser.add_argument("--only-sim", action="store_true")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--workdir", default="/tmp/aisys-replay")
    parser.add_argument("--out", default=str(RESULTS / "replay.json"))
    parser.add_argument("--set", action="append", default=[], help="extra section.key=value overrides")
    args = parser.parse_args(argv)

    for name, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("MLFLOW_DISABLE_TELEMETRY", "true"),
                        ("DO_NOT_TRACK", "true")):
        os.environ.setdefault(name, value)
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {msg}", flush=True)

    out: dict[str, Any] = {"machine": f"{platform.node()} ({os.cpu_count()} CPUs)", "args": vars(args)}
    if not args.only_sim:
        out["movielens"] = run_movielens(args, root, log)
    if not args.skip_sim:
        out["simulator"] = run_simulator(args, root, log)
    out["wall_s"] = round(time.perf_counter() - started, 1)
    print_tables(out)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and (args.skip_sim or args.only_sim):
        # A partial run updates its own section and keeps the other one from the previous run.
        previous = json.loads(path.read_text())
        kept = {k: previous[k] for k in ("movielens", "simulator") if k in previous and k not in out}
        out = {**out, **kept, "args": {**previous.get("args", {}), **{"latest": vars(args)}}}
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"\nwrote {args.out}")
    return out


if __name__ == "__main__":
    main()
