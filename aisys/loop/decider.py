"""The loop's decisions: the retrain policy applied to each of the monitor's findings, with the loop's state.

The monitor reports (:class:`~aisys.monitoring.findings.Findings`, one per check); :class:`RetrainDecider`
decides. It owns what the decisions depend on and leave behind:

* the retrain times (the cooldown and the daily budget count them); a retrain decision counts from the moment
  it is made, so a failed retrain is not retried in a tight loop;
* the pending request (the latest retrain decision not yet handled), for the controller to take;
* the last decisions, the ``aisys_retrain_decisions_total`` counter and the audit table (every decision, "no"
  included; :class:`~aisys.monitoring.audit.ParquetAuditLog` in the lake, which the operator view reads).

A decider started on a lake that already holds an audit table counts the retrains of its last 24 hours, so a
restarted loop keeps the budget. A retrain started by hand is recorded with :meth:`RetrainDecider.record_retrain`
(an audit row with the trigger ``manual``). No Ray or MLflow of its own (the counter goes to Ray's metrics only
when Ray is up, :mod:`aisys.monitoring.metrics`); the time of a decision is its finding's.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timezone
from typing import Any, Iterable

import pandas as pd

from aisys.config import AppConfig, MonitorConfig
from aisys.loop.policy import DAY, Decision, PolicyState, RetrainPolicy
from aisys.monitoring import metrics
from aisys.monitoring.audit import AuditLog, InMemoryAuditLog, ParquetAuditLog
from aisys.monitoring.findings import Findings

_KEEP = 50  # decisions kept for status()


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def recent_retrains(audit: AuditLog, now: datetime) -> list[datetime]:
    """The times of the retrains (decided or by hand) the audit table holds from the 24 hours before ``now``."""
    table = audit.read()
    if table.empty:
        return []
    times = pd.to_datetime(table.loc[table["retrain"].astype(bool), "at"], utc=True)
    return sorted(t.to_pydatetime() for t in times if now - DAY < t.to_pydatetime() <= now)


class RetrainDecider:
    """Decides on the monitor's findings; see the module docstring."""

    def __init__(self, cfg: MonitorConfig, audit: AuditLog | None = None, now: datetime | None = None):
        self.cfg = cfg
        self.policy = RetrainPolicy(cfg, audit if audit is not None else InMemoryAuditLog())
        self.retrain_times: deque[datetime] = deque(maxlen=max(cfg.max_retrains_per_day, 1) * 4)
        self.retrain_times.extend(recent_retrains(self.policy.audit, now or _utcnow()))
        self.decisions: deque[Decision] = deque(maxlen=_KEEP)
        self.pending: Decision | None = None

    @classmethod
    def from_config(cls, cfg: AppConfig, audit: AuditLog | None = None) -> "RetrainDecider":
        """The workspace's decider: ``cfg.monitor``'s rules, the audit table in the lake unless one is given."""
        return cls(cfg.monitor, audit if audit is not None else ParquetAuditLog(cfg.paths.lake_uri, cfg.paths))

    @property
    def audit(self) -> AuditLog:
        return self.policy.audit

    def decide(self, findings: Findings) -> Decision:
        """Apply the policy to one check's findings at the check's time; audit, count and keep the decision."""
        state = PolicyState.from_findings(findings, self.retrain_times)
        decision = self.policy.evaluate(state, findings.at)
        metrics.record_retrain_decision(decision.outcome)
        self.decisions.append(decision)
        if decision.retrain:
            self.retrain_times.append(decision.at)
            self.pending = decision
        return decision

    def decide_all(self, findings: Iterable[Findings]) -> list[Decision]:
        """:meth:`decide` on each finding, oldest first (each check's decision sees the ones before it)."""
        return [self.decide(f) for f in sorted(findings, key=lambda f: (f.at, f.check))]

    def take_request(self) -> dict[str, Any] | None:
        """The latest retrain decision not yet taken (then cleared), as the controller's request."""
        decision, self.pending = self.pending, None
        return None if decision is None else decision.to_dict()

    def record_retrain(self, reason: str = "manual retrain", at: datetime | None = None) -> Decision:
        """Count a retrain started outside the policy (by hand) against the cooldown and the budget, and
        audit it (outcome ``retrain``, trigger ``manual``)."""
        decision = Decision(at=at or _utcnow(), retrain=True, triggers=("manual",), reasons=(reason,),
                            blocked_by=())
        self.policy.audit.append(decision.to_record())
        self.retrain_times.append(decision.at)
        self.decisions.append(decision)
        return decision

    def outcomes(self) -> list[str]:
        """The outcomes of the kept decisions, oldest first (``retrain``, ``blocked``, ``none``)."""
        return [d.outcome for d in list(self.decisions)]

    def audit_log(self) -> pd.DataFrame:
        """Every decision recorded so far (the audit table)."""
        return self.policy.audit.read()

    def status(self) -> dict[str, Any]:
        """The last decisions, the pending request and the retrain times, as plain JSON-able data."""
        return {
            "decisions": [d.to_dict() for d in list(self.decisions)[-10:]],
            "pending_retrain": self.pending is not None,
            "retrain_times": [t.isoformat() for t in self.retrain_times],
        }
