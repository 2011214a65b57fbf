"""When to retrain (pure): triggers, blocks, and an audit row for every decision. The loop decides; the
monitor only reports (:class:`~aisys.monitoring.findings.Findings`).

:class:`RetrainPolicy` looks at a :class:`PolicyState` (a check's findings and the loop's
retrain times) at a given time and returns a :class:`Decision`. It *triggers* on

* ``drift``: the largest PSI of a check above ``psi_threshold`` for the last
  ``drift_consecutive_checks`` checks in a row;
* ``hit_rate_drop``: the serving model's recent online hit-rate below its own
  baseline by more than ``hit_rate_drop`` (relative), once ``hit_rate_min_lists``
  lists back it, and the drop is significant (one-sided two-proportion z-test,
  p below ``hit_rate_drop_alpha``; a few hundred lists swing by chance);
* ``new_data``: at least ``min_new_events`` events since the model's snapshot.

A trigger is *blocked* by the cooldown (the last retrain less than
``cooldown_s`` ago) or the daily budget (``max_retrains_per_day`` retrains in
the last 24 hours, a rolling window). ``retrain`` is true only when something
triggered and nothing blocked. Every decision, "no" included, is appended to the
audit log with its time, inputs and reasons.

The clock is the caller's: ``evaluate(state, now)``, so tests step time freely.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, Mapping, Sequence

from aisys.config import MonitorConfig
from aisys.monitoring.audit import AuditLog, InMemoryAuditLog
from aisys.monitoring.findings import Findings, drift_streak

DAY = timedelta(days=1)
Outcome = Literal["retrain", "blocked", "none"]


@dataclass(frozen=True)
class PolicyState:
    """What the policy decides on: a check's findings and the loop's retrain times. Times are UTC datetimes."""

    drift_history: Sequence[Mapping[str, float]] = ()  # PSI per feature of each check, oldest first
    model_version: str | None = None
    online_hit_rate: float | None = None  # recent hit-rate of the serving model
    baseline_hit_rate: float | None = None  # the same model's own baseline
    judged_lists: int = 0  # lists behind online_hit_rate
    baseline_lists: int = 0  # lists behind baseline_hit_rate (0: unknown, the significance test is skipped)
    new_events: int = 0  # events since the model's training snapshot
    retrain_times: Sequence[datetime] = ()  # earlier retrain decisions

    @classmethod
    def from_findings(cls, findings: Findings, retrain_times: Sequence[datetime] = ()) -> "PolicyState":
        """The monitor's findings of one check, with the retrains the loop has counted so far."""
        return cls(
            drift_history=list(findings.drift_history),
            model_version=findings.model_version,
            online_hit_rate=findings.online_hit_rate,
            baseline_hit_rate=findings.baseline_hit_rate,
            judged_lists=findings.judged_lists,
            baseline_lists=findings.baseline_lists,
            new_events=findings.new_events,
            retrain_times=list(retrain_times),
        )

    def to_inputs(self) -> dict[str, Any]:
        """The state as plain JSON-able inputs for the audit row (latest drift check only)."""
        return {
            "latest_drift": dict(self.drift_history[-1]) if self.drift_history else {},
            "drift_checks": len(self.drift_history),
            "model_version": self.model_version,
            "online_hit_rate": self.online_hit_rate,
            "baseline_hit_rate": self.baseline_hit_rate,
            "judged_lists": self.judged_lists,
            "baseline_lists": self.baseline_lists,
            "new_events": self.new_events,
            "retrain_times": [_utc(t).isoformat() for t in self.retrain_times],
        }


def drop_p_value(baseline: float, baseline_lists: int, recent: float, recent_lists: int) -> float | None:
    """One-sided p-value that the recent hit-rate is truly below the baseline (pooled two-proportion z-test).

    ``None`` when either count is 0 (nothing to test). A p-value of 0.5 means no evidence either way.
    """
    if baseline_lists <= 0 or recent_lists <= 0:
        return None
    pooled = (baseline * baseline_lists + recent * recent_lists) / (baseline_lists + recent_lists)
    variance = pooled * (1.0 - pooled) * (1.0 / baseline_lists + 1.0 / recent_lists)
    if variance <= 0:  # both rates 0 or both 1: no spread, a difference is certain
        return 0.0 if recent < baseline else 1.0
    z = (baseline - recent) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@dataclass(frozen=True)
class Decision:
    """One evaluation: whether to retrain, what triggered, what blocked."""

    at: datetime
    retrain: bool
    triggers: tuple[str, ...]  # machine names: drift, hit_rate_drop, new_data
    reasons: tuple[str, ...]  # one sentence per trigger (or why nothing triggered)
    blocked_by: tuple[str, ...]  # one sentence per block (empty unless something triggered)
    inputs: dict[str, Any] = field(default_factory=dict)
    model_version: str | None = None

    @property
    def outcome(self) -> Outcome:
        """``retrain``, ``blocked`` (triggered but held back) or ``none``."""
        if self.retrain:
            return "retrain"
        return "blocked" if self.triggers else "none"

    def to_record(self) -> dict[str, Any]:
        """The audit row."""
        return {
            "at": self.at,
            "model_version": self.model_version,
            "retrain": self.retrain,
            "outcome": self.outcome,
            "triggers": list(self.triggers),
            "reasons": list(self.reasons),
            "blocked_by": list(self.blocked_by),
            "inputs": json.dumps(self.inputs, sort_keys=True, default=str),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for status views)."""
        record = self.to_record()
        record["at"] = self.at.isoformat()
        record["inputs"] = self.inputs
        return record


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


class RetrainPolicy:
    """The retrain rules of ``cfg.monitor``; see the module docstring."""

    def __init__(self, cfg: MonitorConfig, audit: AuditLog | None = None):
        self.cfg = cfg
        self.audit = audit if audit is not None else InMemoryAuditLog()

    def drift_streak(self, drift_history: Sequence[Mapping[str, float]]) -> int:
        """Checks in a row, ending with the latest, whose largest PSI is above the threshold."""
        return drift_streak(drift_history, self.cfg.psi_threshold)

    def evaluate(self, state: PolicyState, now: datetime) -> Decision:
        """Decide at ``now``, append the decision to the audit log, and return it."""
        now = _utc(now)
        cfg = self.cfg
        triggers: list[str] = []
        reasons: list[str] = []

        streak = self.drift_streak(state.drift_history)
        if streak >= cfg.drift_consecutive_checks:
            latest = state.drift_history[-1]
            drifted = sorted((f for f, v in latest.items() if v > cfg.psi_threshold), key=lambda f: -latest[f])
            shown = ", ".join(f"{f} {latest[f]:.3f}" for f in drifted)
            triggers.append("drift")
            reasons.append(
                f"drift: PSI above {cfg.psi_threshold} for {streak} consecutive checks "
                f"(needs {cfg.drift_consecutive_checks}); latest: {shown}"
            )

        if (
            state.online_hit_rate is not None
            and state.baseline_hit_rate is not None
            and state.baseline_hit_rate > 0
            and state.judged_lists >= cfg.hit_rate_min_lists
        ):
            floor = state.baseline_hit_rate * (1.0 - cfg.hit_rate_drop)
            if state.online_hit_rate < floor:
                drop = 1.0 - state.online_hit_rate / state.baseline_hit_rate
                p = drop_p_value(state.baseline_hit_rate, state.baseline_lists,
                                 state.online_hit_rate, state.judged_lists)
                allowed = f"allowed {cfg.hit_rate_drop:.0%}, {state.judged_lists} lists"
                if cfg.hit_rate_drop_alpha and p is not None and p >= cfg.hit_rate_drop_alpha:
                    reasons.append(
                        f"hit-rate {state.online_hit_rate:.3f} is {drop:.0%} below the baseline "
                        f"{state.baseline_hit_rate:.3f} ({allowed}) but not significantly "
                        f"(p={p:.3f} >= {cfg.hit_rate_drop_alpha}): no trigger"
                    )
                else:
                    triggers.append("hit_rate_drop")
                    shown_p = "" if p is None else f", p={p:.4f}"
                    reasons.append(
                        f"hit_rate_drop: online hit-rate {state.online_hit_rate:.3f} is {drop:.0%} below the model's "
                        f"baseline {state.baseline_hit_rate:.3f} ({allowed}{shown_p})"
                    )

        if state.new_events >= cfg.min_new_events:
            triggers.append("new_data")
            reasons.append(f"new_data: {state.new_events} new events (threshold {cfg.min_new_events})")

        blocked_by: list[str] = []
        if triggers:
            blocked_by = self._blocks(state.retrain_times, now)
        else:
            reasons.append(
                f"no trigger: drift streak {streak}/{cfg.drift_consecutive_checks}, "
                f"new events {state.new_events}/{cfg.min_new_events}, "
                f"hit-rate {_fmt(state.online_hit_rate)} vs baseline {_fmt(state.baseline_hit_rate)} "
                f"({state.judged_lists}/{cfg.hit_rate_min_lists} lists)"
            )

        decision = Decision(
            at=now,
            retrain=bool(triggers) and not blocked_by,
            triggers=tuple(triggers),
            reasons=tuple(reasons),
            blocked_by=tuple(blocked_by),
            inputs=state.to_inputs(),
            model_version=state.model_version,
        )
        self.audit.append(decision.to_record())
        return decision

    def _blocks(self, retrain_times: Sequence[datetime], now: datetime) -> list[str]:
        cfg = self.cfg
        times = sorted(_utc(t) for t in retrain_times if _utc(t) <= now)
        blocked: list[str] = []
        if times and (now - times[-1]).total_seconds() < cfg.cooldown_s:
            ago = (now - times[-1]).total_seconds()
            blocked.append(
                f"cooldown: last retrain {ago:.0f} s ago at {times[-1].isoformat()} (cooldown {cfg.cooldown_s:.0f} s)"
            )
        in_last_day = sum(1 for t in times if now - t < DAY)
        if in_last_day >= cfg.max_retrains_per_day:
            blocked.append(
                f"daily budget: {in_last_day} retrain(s) in the last 24 h (max {cfg.max_retrains_per_day})"
            )
        return blocked


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
