"""The simulator scenario of benchmarks/replay.py: a taste shift and new items, the live model against the loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from aisys.loop.replay import rolling_mean, time_sorted
from replay_scenario import Scenario, ScenarioResult, prepare_base

SIM_OVERRIDES = ("train.epochs=4", "train.lr=0.005", "gate.max_popularity_ratio=5.0")

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
