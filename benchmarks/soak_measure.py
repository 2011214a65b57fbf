"""The soak benchmark's measurements (pure apart from reading /proc): which windows are compared, memory growth
per process and in total, CPU use, request status classes, and the RSS of every process of the local Ray."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

MB = 1024 * 1024

# ------------------------------------------------------------------ pure: windows, growth, percentiles


def default_warmup_s(rate: float, event_share: float, check_every_events: int, floor_s: float = 120.0) -> float:
    """Seconds of warm-up before the early window: at least ``floor_s``, and past the drift monitor's first check.

    The first check (after ``check_every_events`` live events) imports pandas/scipy and loads the reference
    sample into the monitor actor: a one-time step of ~200 MB measured here. Inside the early window it would
    read as growth in reverse (a low start); so the warm-up lasts 1.5x the time those events take to arrive.
    """
    if rate <= 0 or event_share <= 0:
        raise ValueError(f"rate and event_share must be positive, got {rate} and {event_share}")
    return max(floor_s, 1.5 * check_every_events / (rate * event_share))


def growth_windows(duration_s: float, warmup_s: float, window_s: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """The (start, end) second ranges of the early and the late window of a run of ``duration_s``.

    Early: ``[warmup_s, warmup_s + window_s]``; late: the last ``window_s``. A run too short for both windows
    after the warm-up (a smoke run) scales them: warm-up 20% and each window 25% of the run, so they never
    overlap.
    """
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    if warmup_s < 0 or window_s <= 0:
        raise ValueError(f"warmup_s must be >= 0 and window_s > 0, got {warmup_s} and {window_s}")
    if warmup_s + 2 * window_s > duration_s:
        warmup_s, window_s = 0.2 * duration_s, 0.25 * duration_s
    return (warmup_s, warmup_s + window_s), (duration_s - window_s, duration_s)


def second_half_window(duration_s: float, early: tuple[float, float]) -> tuple[float, float]:
    """A window as long as ``early`` starting half-way through the run.

    Compared with the late window it tells a buffer that filled up early and then stayed flat (bounded by
    design: a sliding window, a capped event store) from steady growth (a leak), which keeps growing in the
    second half too.
    """
    length = early[1] - early[0]
    return (duration_s / 2, duration_s / 2 + length)


def cpu_percent(samples: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Per label, the CPU it used between the first and the last sample, in % of one core."""
    if len(samples) < 2 or samples[-1]["t"] <= samples[0]["t"]:
        return {}
    first, last = samples[0].get("cpu_s", {}), samples[-1].get("cpu_s", {})
    span = samples[-1]["t"] - samples[0]["t"]
    return {label: round(100 * (used - first.get(label, 0.0)) / span, 1) for label, used in last.items()}


def mean_in(samples: Sequence[Mapping[str, Any]], key: str, span: tuple[float, float]) -> float | None:
    """Mean of ``sample["rss"][key]`` over the samples whose ``t`` lies in ``span`` (None when none has it)."""
    lo, hi = span
    values = [s["rss"][key] for s in samples if lo <= s["t"] <= hi and s["rss"].get(key) is not None]
    return sum(values) / len(values) if values else None


def memory_growth(samples: Sequence[Mapping[str, Any]], early: tuple[float, float], late: tuple[float, float],
                  max_growth: float = 0.10) -> dict[str, dict[str, Any]]:
    """Per process label (and ``total``): mean RSS in ``early`` and ``late``, the growth, and PASS/FAIL.

    ``samples`` are ``{"t": seconds, "rss": {label: bytes}}``. The total is each sample's sum over its labels, so
    a process that appears or goes away (a helper worker) counts in the total where it was present. Growth is
    ``late / early - 1``; a label missing from either window gets ``verdict: "n/a"``.
    """
    labels = sorted({label for s in samples for label in s["rss"]})
    with_total = [{"t": s["t"], "rss": {"total": sum(v for v in s["rss"].values() if v is not None)}} for s in samples]
    out: dict[str, dict[str, Any]] = {}
    for label, rows in [(label, samples) for label in labels] + [("total", with_total)]:
        start, end = mean_in(rows, label, early), mean_in(rows, label, late)
        if start is None or end is None or start <= 0:
            out[label] = {"start_mb": _mb(start), "end_mb": _mb(end), "growth_pct": None, "verdict": "n/a"}
            continue
        growth = end / start - 1.0
        out[label] = {"start_mb": _mb(start), "end_mb": _mb(end), "growth_pct": round(100 * growth, 2),
                      "verdict": "PASS" if growth < max_growth else "FAIL"}
    return out


def _mb(value: float | None) -> float | None:
    return None if value is None else round(value / MB, 1)


def classify_status(status: int | None, expected: Iterable[int]) -> str:
    """``transport`` (no answer), ``5xx``, ``expected`` (a status this request kind is meant to get) or
    ``unexpected`` (any other status)."""
    if status is None:
        return "transport"
    if status >= 500:
        return "5xx"
    return "expected" if status in set(expected) else "unexpected"


# ------------------------------------------------------------------ processes


# Ray sets a worker's process title to ``ray::<actor class>`` (``ray::<class>.<method>`` while a method runs).
ROLE_PATTERNS = [
    ("replica", re.compile(r"ray::ServeReplica:")),
    ("serve_controller", re.compile(r"ray::ServeController")),
    ("proxy", re.compile(r"ray::ProxyActor")),
    ("session_store", re.compile(r"ray::SessionStoreActor")),
    ("rate_limiter", re.compile(r"ray::RateLimiterActor")),
    ("monitor", re.compile(r"ray::DriftMonitor")),
    ("idle_workers", re.compile(r"ray::IDLE")),
    ("raylet", re.compile(r"(^|/)raylet(\s|$)")),
    ("gcs_server", re.compile(r"(^|/)gcs_server(\s|$)")),
    ("log_monitor", re.compile(r"log_monitor\.py")),
    ("autoscaler_monitor", re.compile(r"autoscaler/_private/monitor\.py")),
    ("dashboard_agent", re.compile(r"ray::DashboardAgent|dashboard/agent\.py")),
    ("runtime_env_agent", re.compile(r"ray::RuntimeEnvAgent|runtime_env/agent")),
    # The dashboard head runs even with include_dashboard=False (a minimal head: no UI, the job/state APIs).
    ("dashboard_head", re.compile(r"dashboard/dashboard\.py")),
]
# Roles that may hold several processes (their RSS is summed); the others get ``#2`` suffixes if duplicated.
SUMMED_ROLES = {"idle_workers", "other_ray"}


def process_role(cmdline: str) -> str:
    """The role of a process of our Ray from its command line / title (``other_ray`` when unknown)."""
    for role, pattern in ROLE_PATTERNS:
        if pattern.search(cmdline):
            return role
    return "other_ray"


def snapshot_processes() -> tuple[dict[str, int], dict[str, float], dict[str, list[int]]]:
    """RSS in bytes and CPU seconds used so far, per role, of this process (``driver``) and all its
    descendants, and the pids per role.

    Only descendants are looked at, so another Ray on the same machine (other users, tests) never counts.
    """
    import psutil

    me = psutil.Process()
    found: list[tuple[str, int, int, float]] = []
    for proc, role in [(me, "driver")] + [(p, None) for p in me.children(recursive=True)]:
        try:
            with proc.oneshot():
                role = role or process_role(" ".join(proc.cmdline()) or proc.name())
                cpu = proc.cpu_times()
                found.append((role, proc.pid, proc.memory_info().rss, cpu.user + cpu.system))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # it went away between listing and reading
    rss: dict[str, int] = {}
    cpu_s: dict[str, float] = {}
    pids: dict[str, list[int]] = {}
    counts: Counter[str] = Counter()
    for role, pid, value, used in sorted(found, key=lambda r: (r[0], r[1])):
        if role in SUMMED_ROLES:
            label = role
        else:
            counts[role] += 1
            label = role if counts[role] == 1 else f"{role}#{counts[role]}"
        rss[label] = rss.get(label, 0) + value
        cpu_s[label] = round(cpu_s.get(label, 0.0) + used, 2)
        pids.setdefault(label, []).append(pid)
    return rss, cpu_s, pids
