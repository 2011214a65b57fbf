"""The drift monitor: one named Ray actor watching live events and served lists.

:class:`DriftMonitor` is a plain class (usable and testable without Ray);
:func:`get_or_create` runs it as the workspace's named, detached actor
(``num_cpus=0``: it is bookkeeping, it must never hold a core a replica needs).

It holds the reference profile of the serving model's training snapshot and a
sliding window of the last ``cfg.monitor.window_events`` live events and served
scores. Every ``check_every_events`` events it

1. computes the fast statistics (PSI, Jensen-Shannon) per feature against the
   profile and exports them as gauges (``aisys_drift_statistic``), with the
   online hit-rate per model version and arm (``aisys_online_hit_rate``);
2. reports what the check found (:class:`~aisys.monitoring.findings.Findings`:
   the drift streak's PSI history, the serving model's online hit-rate against
   its baseline, the events since the reference) and keeps it for the loop to
   take (:meth:`DriftMonitor.take_findings`);
3. writes an Evidently report into the lake when one is due
   (``report_every_s``) or when a check first sees drift, and links it from
   MLflow when the profile names a model version.

The monitor reports; it never decides. Whether to retrain, the cooldown, the
daily budget and the audit table are the loop's
(:class:`aisys.loop.decider.RetrainDecider`, run by the controller).
After a new model is promoted, call :meth:`DriftMonitor.set_reference` with
its profile: the drift streak and the new-event count start again.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from aisys.config import AppConfig
from aisys.monitoring import metrics
from aisys.monitoring.drift import FeatureDrift, compare_to_profile
from aisys.monitoring.findings import Findings, drift_streak
from aisys.monitoring.online_quality import HitRateTracker
from aisys.monitoring.profile import ReferenceProfile, profile_from_lake, read_reference_events

NAMESPACE = "aisys"
CHAMPION = "champion"
MIN_SAMPLE = 30  # fewer current values than this give PSI noise, not signal
_EVENT_FIELDS = ("user_id", "item_id", "category", "price", "event_type")
_KEEP = 50  # findings, reports and errors kept for status()
_WAITING = 1000  # findings kept for the loop to take; the oldest go first when no loop takes them


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def monitor_actor_name(cfg: AppConfig) -> str:
    """``aisys-drift-monitor-<hash of the workspace>``: one monitor per workspace."""
    digest = hashlib.sha256(cfg.paths.workspace.encode()).hexdigest()[:10]
    return f"aisys-drift-monitor-{digest}"


def _rows(rows: Any) -> list[Mapping[str, Any]]:
    if isinstance(rows, pd.DataFrame):
        return rows.to_dict("records")
    if hasattr(rows, "to_pylist"):  # a pyarrow Table
        return rows.to_pylist()
    if isinstance(rows, Mapping):
        return [rows]
    return list(rows)


class DriftMonitor:
    """Sliding-window drift and online-quality monitor; see the module docstring."""

    def __init__(
        self,
        cfg: AppConfig,
        profile: ReferenceProfile | Mapping[str, Any] | None = None,
        reference_sample: pd.DataFrame | None = None,
        clock: Callable[[], datetime] | None = None,
        link_reports_to_mlflow: bool = True,
    ):
        self.cfg = cfg
        self.mcfg = cfg.monitor
        self.clock = clock or _utcnow
        self.link_reports_to_mlflow = link_reports_to_mlflow
        self.hit_rates = HitRateTracker(
            self.mcfg.hit_rate_horizon_events,
            baseline_lists=self.mcfg.hit_rate_min_lists,
            window_lists=self.mcfg.hit_rate_window_lists,
        )
        self._events: deque[tuple] = deque(maxlen=self.mcfg.window_events)
        self._scores: deque[float] = deque(maxlen=self.mcfg.window_events)
        self.events_seen = 0
        self.checks = 0
        self._since_check = 0
        self.findings: deque[Findings] = deque(maxlen=_KEEP)
        self._waiting: deque[Findings] = deque(maxlen=_WAITING)
        self.reports: deque[dict] = deque(maxlen=_KEEP)
        self.errors: deque[str] = deque(maxlen=_KEEP)
        self._last_champion_version: str | None = None
        self.latest_stats: dict[str, FeatureDrift] = {}
        self.last_check_at: datetime | None = None
        self.last_report_at: datetime = self.clock()  # the first scheduled report comes one period in
        if profile is None:
            profile = self._profile_from_lake()
        self.set_reference(profile, reference_sample)

    # --- reference -----------------------------------------------------------------------------

    def _profile_from_lake(self) -> ReferenceProfile | None:
        try:
            return profile_from_lake(self.cfg)
        except LookupError as err:
            self.errors.append(f"no reference profile yet: {err}")
            return None

    def set_reference(
        self,
        profile: ReferenceProfile | Mapping[str, Any] | None,
        reference_sample: pd.DataFrame | None = None,
    ) -> dict[str, Any]:
        """Compare from now on against ``profile`` (a new model's); restarts the drift streak,
        the score window and the new-event count. Returns the status."""
        if profile is not None and not isinstance(profile, ReferenceProfile):
            profile = ReferenceProfile.from_dict(dict(profile))
        self.profile = profile
        self._reference_sample = reference_sample
        self.drift_history: deque[dict[str, float]] = deque(maxlen=max(self.mcfg.drift_consecutive_checks, 10))
        self._scores.clear()
        self.new_events = 0
        return self.status()

    @property
    def model_version(self) -> str | None:
        return None if self.profile is None else self.profile.model_version

    # --- observing -----------------------------------------------------------------------------

    def observe_events(self, rows: Any) -> dict[str, Any]:
        """Take live events (dicts with ``user_id``, ``item_id`` and optionally ``category``,
        ``price``, ``event_type``; or a DataFrame / Arrow table); runs a check every
        ``check_every_events``. Returns the findings of the checks this call ran."""
        found: list[Findings] = []
        for row in _rows(rows):
            user, item = row.get("user_id"), row.get("item_id")
            if user is None or item is None:
                raise ValueError(f"an event needs user_id and item_id; got keys {sorted(row)}")
            self._events.append(tuple(row.get(f) for f in _EVENT_FIELDS))
            self.hit_rates.record_event(str(user), str(item))
            self.events_seen += 1
            self.new_events += 1
            self._since_check += 1
            if self._since_check >= self.mcfg.check_every_events:
                found.append(self.check())
        return {"events_seen": self.events_seen, "checks": found}

    def observe_recommendations(
        self,
        user_id: str,
        items: Sequence[str],
        scores: Sequence[float] | None = None,
        model_version: str | None = None,
        arm: str = CHAMPION,
    ) -> None:
        """A list was served: it will be judged by the user's next events; its scores join the
        score window when it came from the profile's model (or the profile names none)."""
        version = str(model_version if model_version is not None else (self.model_version or "unknown"))
        self.hit_rates.record_list(str(user_id), items, version, arm)
        if arm == CHAMPION:
            self._last_champion_version = version
        if scores is not None and (self.model_version is None or version == self.model_version):
            self._scores.extend(float(s) for s in scores if np.isfinite(s))

    def observe_recommendation_lists(self, lists: Iterable[Mapping[str, Any]]) -> int:
        """Many served lists at once (dicts with the arguments of :meth:`observe_recommendations`)."""
        n = 0
        for entry in lists:
            self.observe_recommendations(
                entry["user_id"], entry["items"], entry.get("scores"), entry.get("model_version"),
                entry.get("arm", CHAMPION),
            )
            n += 1
        return n

    # --- checking ------------------------------------------------------------------------------

    def window_frame(self) -> pd.DataFrame:
        """The live window as a DataFrame (oldest first)."""
        return pd.DataFrame(list(self._events), columns=list(_EVENT_FIELDS))

    def check(self, now: datetime | None = None) -> Findings:
        """Compute the fast statistics, export them, report the findings, and write a report if due."""
        now = now or self.clock()
        self._since_check = 0
        self.checks += 1
        self.last_check_at = now
        window = self.window_frame()
        stats: dict[str, FeatureDrift] = {}
        if self.profile is not None and len(window):
            stats = compare_to_profile(self.profile, window, list(self._scores), min_events=MIN_SAMPLE)
        self.latest_stats = stats
        for feature, stat in stats.items():
            metrics.set_drift_statistic(feature, "psi", stat.psi)
            metrics.set_drift_statistic(feature, "js", stat.js)
        metrics.set_drift_window_events(len(window))
        if stats:
            self.drift_history.append({f: s.psi for f, s in stats.items()})

        for rate in self.hit_rates.all():
            if rate.recent_hit_rate is not None:
                metrics.set_online_hit_rate(rate.model_version, rate.arm, rate.recent_hit_rate, rate.judged)
        # The serving model: the profile's, else the version the champion arm served last.
        serving_version = self.model_version or self._last_champion_version
        serving = None if serving_version is None else self.hit_rates.get(serving_version, CHAMPION)
        found = Findings(
            at=now,
            check=self.checks,
            drift_history=tuple(self.drift_history),
            model_version=serving_version,
            online_hit_rate=None if serving is None else serving.recent_hit_rate,
            baseline_hit_rate=None if serving is None else serving.baseline_hit_rate,
            judged_lists=0 if serving is None else serving.recent_judged,
            baseline_lists=self.mcfg.hit_rate_min_lists,
            new_events=self.new_events,
        )
        self.findings.append(found)
        self._waiting.append(found)

        streak = drift_streak(self.drift_history, self.mcfg.psi_threshold) if stats else 0
        first_drift = self.mcfg.report_on_drift and streak == 1
        due = (now - self.last_report_at).total_seconds() >= self.mcfg.report_every_s
        if first_drift or due:
            self.write_report(now, reason="drift suspected" if first_drift else "scheduled")
        return found

    # --- reports -------------------------------------------------------------------------------

    def _reference_frame(self) -> pd.DataFrame | None:
        if self._reference_sample is None and self.profile is not None and self.profile.snapshot_id:
            frame = read_reference_events(self.cfg, self.profile.snapshot_id)
            self._reference_sample = frame.iloc[-self.mcfg.window_events:].reset_index(drop=True)
        return self._reference_sample

    def write_report(self, now: datetime | None = None, reason: str = "requested") -> dict[str, Any] | None:
        """Write an Evidently drift report of the window against the reference sample; None (with
        the cause in ``status()['errors']``) when there is nothing to compare yet."""
        from aisys.monitoring.evidently_report import log_report_to_mlflow, report_frame, write_drift_report

        now = now or self.clock()
        self.last_report_at = now
        window = self.window_frame()
        try:
            reference = self._reference_frame()
            if reference is None or reference.empty or window.empty:
                self.errors.append(f"{now.isoformat()} report skipped: no reference sample or empty window")
                return None
            started = time.perf_counter()
            report = write_drift_report(
                self.cfg.paths.lake_uri, report_frame(reference, self.profile), report_frame(window, self.profile), now,
                paths=self.cfg.paths, psi_threshold=self.mcfg.psi_threshold,
            )
            entry = {**report.to_dict(), "reason": reason, "seconds": round(time.perf_counter() - started, 3)}
        except Exception as err:  # a report is a side view: it must never take the monitor down
            self.errors.append(f"{now.isoformat()} report failed: {type(err).__name__}: {err}")
            return None
        if self.link_reports_to_mlflow and self.model_version is not None:
            try:
                entry["mlflow"] = log_report_to_mlflow(
                    self.cfg, report.path, model_version=self.model_version, drifted=report.drifted_columns
                )
            except Exception as err:
                self.errors.append(f"{now.isoformat()} linking report to MLflow failed: {type(err).__name__}: {err}")
        self.reports.append(entry)
        return entry

    # --- the loop's and the operator's view ----------------------------------------------------

    def take_findings(self) -> list[Findings]:
        """The findings of the checks since the last call (oldest first, then cleared), for the loop to decide
        on. At most the last 1,000 wait: a monitor nobody reads from does not grow."""
        found = list(self._waiting)
        self._waiting.clear()
        return found

    def status(self) -> dict[str, Any]:
        """Latest statistics, hit-rates, decisions and reports, as plain JSON-able data."""
        return {
            "model_version": self.model_version,
            "snapshot_id": None if self.profile is None else self.profile.snapshot_id,
            "reference_features": [] if self.profile is None else self.profile.features(),
            "events_seen": self.events_seen,
            "window_events": len(self._events),
            "window_scores": len(self._scores),
            "new_events": self.new_events,
            "checks": self.checks,
            "last_check_at": None if self.last_check_at is None else self.last_check_at.isoformat(),
            "latest_stats": {f: s.to_dict() for f, s in self.latest_stats.items()},
            "drift_streak": drift_streak(self.drift_history, self.mcfg.psi_threshold),
            "psi_threshold": self.mcfg.psi_threshold,
            "hit_rates": [r.to_dict() for r in self.hit_rates.all()],
            "open_lists": self.hit_rates.open_lists,
            "findings": [f.to_dict() for f in list(self.findings)[-10:]],
            "findings_waiting": len(self._waiting),
            "reports": list(self.reports)[-10:],
            "last_report": self.reports[-1] if self.reports else None,
            "errors": list(self.errors)[-10:],
        }


def get_or_create(
    cfg: AppConfig,
    profile: ReferenceProfile | None = None,
    reference_sample: pd.DataFrame | None = None,
):
    """The workspace's monitor actor, created on first use (``get_if_exists``: race-free).

    When it already exists the arguments are ignored: call ``set_reference`` on
    the handle to change its profile. Without a profile a new monitor profiles the
    lake's latest snapshot.
    """
    from aisys.runtime import init_ray

    ray = init_ray(cfg)
    actor_class = ray.remote(num_cpus=0, max_restarts=0)(DriftMonitor)
    return actor_class.options(
        name=monitor_actor_name(cfg), namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(cfg, profile, reference_sample)


def drop_monitor(cfg: AppConfig) -> bool:
    """Kill the workspace's monitor actor; ``False`` when there was none."""
    from aisys.runtime import kill_named_actor

    return kill_named_actor(monitor_actor_name(cfg), NAMESPACE)
