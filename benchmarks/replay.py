"""Prequential replay benchmark (issue 5, item 6): what live features, retraining and the drift loop are worth.

MovieLens-100K is replayed in time order through the live HTTP API (Ray Serve + gateway, one replica):
before each event, the user's top-10 is requested (``GET /recommendations/{user}``), then the event is
posted (``POST /events``). A hit is the posted item being in the list requested just before it.

The initial champion -- the default model kind (multistage), trained as `aisys train` does (SASRec on Ray
Train, the generators as Ray tasks, the blend on valid) -- is trained on the first ``--train-share`` of the
interactions by time and registered as champion; the next ``--events`` interactions are replayed, the same rows in every scenario:

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
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from aisys.loop.replay import bootstrap_capture, paired_bootstrap, per_user_hit_rates, split_train_replay
from replay_scenario import Scenario, ScenarioResult, prepare_base
from replay_sim import SIM, run_simulator

RESULTS = Path(__file__).resolve().parent / "results"
ML_PATH = "/tmp/mlcache/ml-100k"
ML_OVERRIDES = (
    "features.max_seq_len=50",
    "train.epochs=8",
    "train.eval_every=2",
    "train.batch_size=64",
    "train.lr=0.002",
)


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
