"""The soak benchmark's summary of a run: memory growth over the compared windows, statuses, latency, CPU; the
table it prints and the figure it draws."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aisys.loadgen.stats import percentile
from soak_load import MIX, rounded
from soak_measure import (
    MB,
    cpu_percent,
    default_warmup_s,
    growth_windows,
    memory_growth,
    second_half_window,
)

def warmup_s(args: argparse.Namespace) -> float:
    """``--warmup-s``, or :func:`default_warmup_s` for the load's event rate and the monitor's check period."""
    if args.warmup_s is not None:
        return args.warmup_s
    from aisys.config import MonitorConfig

    return round(default_warmup_s(args.rate, MIX["event"], MonitorConfig().check_every_events), 1)


def summarise(run: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Growth per process and in total, request counts, errors, latency over the whole run."""
    duration = max(run["samples"][-1]["t"] if run["samples"] else run["elapsed_s"], 1.0)
    early, late = growth_windows(duration, warmup_s(args), args.window_s)
    growth = memory_growth(run["samples"], early, late, args.max_growth)
    half = second_half_window(duration, early)
    for label, g in memory_growth(run["samples"], half, late, args.max_growth).items():
        growth[label]["second_half_growth_pct"] = g["growth_pct"]
    cpu = cpu_percent(run["samples"])
    for label, g in growth.items():
        g["cpu_pct"] = round(sum(cpu.values()), 1) if label == "total" else cpu.get(label)
    windows = [w for w in run["windows"] if w["requests"] and not w.get("drain")]
    p50s = [w["p50_ms"] for w in windows if w["p50_ms"] is not None]
    p99s = [w["p99_ms"] for w in windows if w["p99_ms"] is not None]
    totals = run["totals"]
    return {
        "early_window_s": [round(x, 1) for x in early], "late_window_s": [round(x, 1) for x in late],
        "second_half_window_s": [round(x, 1) for x in half],
        "memory": growth,
        "memory_pass": all(g["verdict"] != "FAIL" for g in growth.values()) and growth["total"]["verdict"] == "PASS",
        "requests": sum(totals.values()),
        "expected": totals.get("expected", 0), "unexpected_4xx": totals.get("unexpected", 0),
        "server_errors_5xx": totals.get("5xx", 0), "transport_errors": totals.get("transport", 0),
        "skipped_sends": run["skipped_sends"],
        "status_totals": run["status_totals"], "kind_status": run["kind_status"],
        "mean_rps": round(sum(totals.values()) / duration, 1),
        "median_window_p50_ms": rounded(percentile(p50s, 50)), "median_window_p99_ms": rounded(percentile(p99s, 50)),
        "worst_window_p99_ms": max(p99s) if p99s else None,
        "errors_pass": totals.get("5xx", 0) == 0 and totals.get("transport", 0) == 0 and totals.get("unexpected", 0) == 0,
    }


def table(summary: dict[str, Any]) -> str:
    """The printed summary: RSS start/end/growth per process, then requests and errors."""
    lines = [f"memory: mean RSS over t={summary['early_window_s'][0]:.0f}-{summary['early_window_s'][1]:.0f}s "
             f"vs t={summary['late_window_s'][0]:.0f}-{summary['late_window_s'][1]:.0f}s",
             f"{'process':<22}{'start MB':>10}{'end MB':>10}{'growth':>9}  verdict{'2nd half':>10}{'CPU %':>8}", "-" * 78]
    memory = summary["memory"]
    for label in [k for k in memory if k != "total"] + ["total"]:
        g = memory[label]
        growth = "-" if g["growth_pct"] is None else f"{g['growth_pct']:+.1f}%"
        half = g.get("second_half_growth_pct")
        half = "-" if half is None else f"{half:+.1f}%"
        cpu = "-" if g.get("cpu_pct") is None else f"{g['cpu_pct']:.1f}"
        lines.append(f"{label:<22}{_f(g['start_mb']):>10}{_f(g['end_mb']):>10}{growth:>9}  {g['verdict']:<7}{half:>10}"
                     f"{cpu:>8}")
    lines += [f"2nd half: growth from t={summary['second_half_window_s'][0]:.0f}-{summary['second_half_window_s'][1]:.0f}s "
              "to the late window (a buffer that filled early stays flat there; a leak keeps growing); "
              "CPU %: of one core, first to last sample",
              "", f"requests {summary['requests']} ({summary['mean_rps']} req/s): expected {summary['expected']}, "
                  f"unexpected 4xx {summary['unexpected_4xx']}, 5xx {summary['server_errors_5xx']}, "
                  f"transport errors {summary['transport_errors']}, skipped sends {summary['skipped_sends']}",
              "by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(summary["status_totals"].items())),
              "by kind and status: " + ", ".join(f"{k}: {v}" for k, v in summary["kind_status"].items()),
              f"latency (all kinds, per {summary.get('sample_s', '')}s window): median p50 "
              f"{summary['median_window_p50_ms']} ms, median p99 {summary['median_window_p99_ms']} ms, "
              f"worst p99 {summary['worst_window_p99_ms']} ms",
              f"memory: {'PASS' if summary['memory_pass'] else 'FAIL'} (each process and the total must grow < {summary.get('max_growth_pct')}%); "
              f"errors: {'PASS' if summary['errors_pass'] else 'FAIL'} (0 5xx, 0 transport, 0 unexpected)"]
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def plot(result: dict[str, Any], path: Path) -> Path:
    """RSS per process over time (top), req/s and p99 over time (bottom), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, windows = result["samples"], result["windows"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    minutes = [s["t"] / 60 for s in samples]
    labels = sorted({label for s in samples for label in s["rss"]},
                    key=lambda label: -max(s["rss"].get(label, 0) for s in samples))
    colours = plt.get_cmap("tab20").colors
    for n, label in enumerate(labels):
        top.plot(minutes, [s["rss"].get(label, float("nan")) / MB for s in samples], label=label, lw=1.2,
                 color=colours[n % len(colours)])
    summary = result["summary"]
    for span in (summary["early_window_s"], summary["late_window_s"]):  # the two windows compared
        top.axvspan(span[0] / 60, span[1] / 60, color="grey", alpha=0.12)
    total = summary["memory"]["total"]
    growth = "" if total["growth_pct"] is None else f", {total['growth_pct']:+.1f}%"
    top.set_ylabel("RSS, MB")
    top.set_title(f"RSS per process (shaded: the windows compared; total {total['start_mb']} -> "
                  f"{total['end_mb']} MB{growth})")
    top.legend(fontsize=7, ncol=3, loc="upper left")
    windows = [w for w in windows if not w.get("drain")]
    wm = [w["t"] / 60 for w in windows]
    bottom.plot(wm, [w["rps"] for w in windows], color="tab:blue", label="req/s")
    bottom.set_ylabel("requests/s", color="tab:blue")
    bottom.set_ylim(0, max([w["rps"] for w in windows] + [result["settings"]["rate"]]) * 1.15)
    bottom.set_xlabel("minutes")
    right = bottom.twinx()
    right.plot(wm, [w["p99_ms"] or float("nan") for w in windows], color="tab:red", label="p99")
    right.plot(wm, [w["p50_ms"] or float("nan") for w in windows], color="tab:orange", label="p50", lw=0.8)
    right.set_ylabel("latency, ms (p50, p99)", color="tab:red")
    right.legend(fontsize=8, loc="upper right")
    bottom.set_title(f"open loop at {result['settings']['rate']:.0f} req/s: "
                     f"{summary['requests']} requests, 5xx {summary['server_errors_5xx']}, "
                     f"transport {summary['transport_errors']}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
