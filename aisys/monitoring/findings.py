"""What one monitor check found (pure): the drift streak and the serving model's online quality, no decision.

The monitor (:mod:`aisys.monitoring.monitor_actor`) reports a :class:`Findings` per check; the loop
(:mod:`aisys.loop.policy`) decides on it. Keeping the findings apart from the decision is what lets the
monitor run without knowing the retrain rules, the cooldown or the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence


def drift_streak(drift_history: Sequence[Mapping[str, float]], psi_threshold: float) -> int:
    """Checks in a row, ending with the latest, whose largest PSI is above ``psi_threshold``."""
    streak = 0
    for check in reversed(drift_history):
        if check and max(check.values()) > psi_threshold:
            streak += 1
        else:
            break
    return streak


@dataclass(frozen=True)
class Findings:
    """One check of the monitor: drift over the recent checks and the serving model's online hit-rate."""

    at: datetime  # when the check ran (UTC)
    check: int  # the monitor's check counter (1 for its first check)
    drift_history: tuple[Mapping[str, float], ...] = ()  # PSI per feature of each recent check, oldest first
    model_version: str | None = None  # the serving model: the profile's, else the champion arm's last
    online_hit_rate: float | None = None  # recent hit-rate of the serving model
    baseline_hit_rate: float | None = None  # the same model's own baseline
    judged_lists: int = 0  # lists behind online_hit_rate
    baseline_lists: int = 0  # lists behind baseline_hit_rate (0: unknown)
    new_events: int = 0  # events since the reference (the model's training snapshot) was set

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for status views)."""
        return {
            "at": self.at.isoformat(),
            "check": self.check,
            "latest_drift": dict(self.drift_history[-1]) if self.drift_history else {},
            "drift_checks": len(self.drift_history),
            "model_version": self.model_version,
            "online_hit_rate": self.online_hit_rate,
            "baseline_hit_rate": self.baseline_hit_rate,
            "judged_lists": self.judged_lists,
            "baseline_lists": self.baseline_lists,
            "new_events": self.new_events,
        }
