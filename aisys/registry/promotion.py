"""Promotion and rollback: the adapter that runs the pure gate (:mod:`aisys.registry.gate`) on registered models.

``promote(cfg, version)``:

1. resolve the candidate (``version``, default the version behind ``cfg.online.challenger_alias``) and the
   current champion (``cfg.registry.champion_alias``; none is fine);
2. build **one** holdout from a lake snapshot (latest by default; :mod:`aisys.registry.holdout`): each user's
   last interaction as target after the rest, i.e. the test part of
   :func:`~aisys.quality.protocol.leave_last_one_out`, with segments computed from the events (user activity,
   target-item popularity) plus any ``extra_segments`` (gender, age band, ...);
3. evaluate both models on it with full ranking in the snapshot's item-id space (each model maps ids through its
   own vocabulary; a target a model does not know is a miss), so the numbers are comparable;
4. :func:`~aisys.registry.gate.decide`, log the decision as an MLflow run (params, both models' metrics,
   ``decision.json``, tag ``aisys.decision=promote|refuse``), and on promote move the champion alias.

Every champion change made here goes through :mod:`aisys.registry.champion`: the version is appended to the
registered model's tag ``aisys.champion_history`` (a JSON list of versions, oldest first) and stamped
``aisys.champion_since`` before the alias moves; :func:`rollback` walks that history back one step. Serving refuses
a champion that is not the history's last entry (``serve.require_recorded_promotion``), i.e. an alias moved by hand.

**Concurrency.** Reading the champion, gating against it and moving the alias is a read-modify-write: two
promotions running at once would both gate against the same champion and both move the alias (the last one wins,
unjudged against the first, and one history entry is lost). So every champion change (:func:`promote`'s
decision, :func:`~aisys.registry.champion.make_champion`, :func:`rollback`) runs under one lock per registered
model (:func:`~aisys.registry.champion.promotion_lock`; the file sits next to the SQLite DB). The slow part,
evaluating the candidate and the champion it saw first, runs outside the lock; under the lock the champion is read
again and, if it moved meanwhile, the candidate is gated again against the **current** one (``champion_changed``).
The decisions logged in MLflow therefore form one linear history: each promotion names the champion it replaced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping

import numpy as np

from aisys.config import AppConfig
from aisys.registry.champion import (
    CHAMPION_SINCE_TAG,
    HISTORY_TAG,
    alias_version,
    now_iso,
    promotion_lock,
    read_history,
    record_champion,
    registry_client,
)
from aisys.registry.gate import EvalReport, GateDecision, decide
from aisys.registry.holdout import Holdout, build_holdout, report_for_bundle
from aisys.registry.lock import DEFAULT_TIMEOUT_S

ROLLED_BACK_TAG = "aisys.rolled_back_at"
DECISION_TAG = "aisys.decision"
# Set on a version by whoever gated it (aisys train, the retrain loop): the decision run and its verdict.
GATE_RUN_TAG = "aisys.gate_run_id"
GATE_DECISION_TAG = "aisys.gate_decision"


# --------------------------------------------------------------------------- MLflow adapter


@dataclass
class PromotionOutcome:
    """What :func:`promote` decided, on which holdout, and where it was logged."""

    decision: GateDecision
    candidate_version: str
    champion_version: str | None
    promoted: bool
    holdout_id: str | None
    run_id: str
    candidate: EvalReport | None = None
    champion: EvalReport | None = None
    champion_changed: bool = False  # the champion moved while the candidate was evaluated: re-gated against it


def _require_version(client, name: str, version: str) -> None:
    import mlflow

    try:
        client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as err:
        raise LookupError(f"model {name!r} has no version {version!r}: pass a registered version number") from err


def rollback(cfg: AppConfig) -> tuple[str, str]:
    """Make the previous champion current again; return ``(from_version, to_version)``.

    The previous champion is the latest entry of the champion history that is not the current champion. The
    current one is dropped from the history (a second rollback goes one further back) and tagged
    ``aisys.rolled_back_at``. Runs under :func:`~aisys.registry.champion.promotion_lock`, so it never interleaves
    with a promotion. After a hand-moved alias it restores the last champion our code recorded.
    """
    client, _ = registry_client(cfg)
    with promotion_lock(cfg):
        return _rollback(client, cfg)


def _rollback(client, cfg: AppConfig) -> tuple[str, str]:
    name, alias = cfg.registry.model_name, cfg.registry.champion_alias
    current = alias_version(client, cfg, alias)
    if current is None:
        raise LookupError(f"model {name!r} has no {alias!r} alias: nothing to roll back")
    remaining = read_history(client, name)
    while remaining and remaining[-1] == current:
        remaining.pop()
    if not remaining:
        raise LookupError(
            f"no earlier champion of {name!r} is recorded (tag {HISTORY_TAG}): version {current} stays {alias!r}"
        )
    target = remaining[-1]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(remaining))
    client.set_model_version_tag(name, current, ROLLED_BACK_TAG, now_iso())
    client.set_model_version_tag(name, target, CHAMPION_SINCE_TAG, now_iso())
    client.set_registered_model_alias(name, alias, target)
    return current, target


def _log_decision(
    cfg: AppConfig, experiment_id: str, outcome: PromotionOutcome, snapshot_id: str | None
) -> str:
    import mlflow
    from mlflow.entities import Metric, Param

    from aisys.registry.mlflow_registry import SNAPSHOT_TAG, mlflow_metric_name

    client = mlflow.MlflowClient()
    verdict = "promote" if outcome.decision.promote else "refuse"
    run = client.create_run(
        experiment_id,
        run_name=f"gate-v{outcome.candidate_version}-vs-v{outcome.champion_version or 'none'}",
        tags={DECISION_TAG: verdict, "aisys.kind": "gate", **({SNAPSHOT_TAG: snapshot_id} if snapshot_id else {})},
    )
    run_id = run.info.run_id
    params = {
        "candidate_version": outcome.candidate_version,
        "champion_version": outcome.champion_version or "none",
        "holdout_id": outcome.holdout_id or "none",
        **{f"gate.{k}": v for k, v in cfg.gate.model_dump().items()},
    }
    now = int(datetime.now(timezone.utc).timestamp() * 1000)
    metrics = []
    for role, report in (("candidate", outcome.candidate), ("champion", outcome.champion)):
        if report is None:
            continue
        values = {f"{role}_{k}": v for k, v in report.metrics.items()}
        for segment, buckets in report.segments.items():
            values.update({f"{role}_{segment}_{b}_{cfg.gate.metric}": m.get(cfg.gate.metric, np.nan)
                           for b, m in buckets.items()})
        # MLflow stores NaN, but a chart of NaN helps no one: the decision JSON keeps every value.
        metrics += [Metric(mlflow_metric_name(k), float(v), now, 0) for k, v in values.items() if np.isfinite(v)]
    client.log_batch(run_id, metrics=metrics[:900], params=[Param(k, str(v)) for k, v in params.items()])
    client.log_dict(
        run_id,
        {
            **outcome.decision.to_dict(),
            "candidate_version": outcome.candidate_version,
            "champion_version": outcome.champion_version,
            "holdout_id": outcome.holdout_id,
            "candidate": outcome.candidate.to_dict() if outcome.candidate else None,
            "champion": outcome.champion.to_dict() if outcome.champion else None,
        },
        "decision.json",
    )
    client.set_terminated(run_id, "FINISHED")
    return run_id


def promote(
    cfg: AppConfig,
    version: str | None = None,
    snapshot_id: str | None = None,
    extra_segments: Mapping[str, Mapping[str, str]] | None = None,
    lock_timeout_s: float = DEFAULT_TIMEOUT_S,
) -> PromotionOutcome:
    """Gate ``version`` (default: the challenger) against the champion on a snapshot's holdout; promote if it passes.

    See the module docstring. The decision is always logged; the champion alias moves only on promote. It is
    taken under :func:`promotion_lock` against the champion current at that moment, so concurrent calls
    (threads or processes) serialise into a linear history of champions.
    """
    client, experiment_id = registry_client(cfg)
    if version is None:
        version = alias_version(client, cfg, cfg.online.challenger_alias)
        if version is None:
            raise LookupError(
                f"no --version given and no version of {cfg.registry.model_name!r} has alias "
                f"{cfg.online.challenger_alias!r}: run `aisys tune` or pass a version"
            )
    version = str(version)
    _require_version(client, cfg.registry.model_name, version)

    # Optimistic part, outside the lock: evaluate the candidate and the champion seen now (the slow work).
    seen_champion = alias_version(client, cfg, cfg.registry.champion_alias)
    evaluation = None
    if seen_champion != version:
        evaluation = _Evaluation.build(cfg, version, snapshot_id, extra_segments)
        evaluation.report(seen_champion)

    with promotion_lock(cfg, lock_timeout_s):
        # Compare-and-set: decide against the champion as it is now, which may have moved since.
        champion_version = alias_version(client, cfg, cfg.registry.champion_alias)
        changed = champion_version != seen_champion
        if champion_version == version:
            decision = GateDecision(False, [f"version {version} already is the {cfg.registry.champion_alias!r}"])
            outcome = PromotionOutcome(decision, version, champion_version, False, None, "", champion_changed=changed)
            outcome.run_id = _log_decision(cfg, experiment_id, outcome, snapshot_id)
            return outcome
        if evaluation is None:  # it was the champion when we looked, and has been rolled back since
            evaluation = _Evaluation.build(cfg, version, snapshot_id, extra_segments)
        champion = evaluation.report(champion_version)
        decision = decide(evaluation.candidate, champion, cfg.gate)
        outcome = PromotionOutcome(
            decision, version, champion_version, decision.promote, evaluation.holdout.holdout_id, "",
            evaluation.candidate, champion, champion_changed=changed,
        )
        outcome.run_id = _log_decision(cfg, experiment_id, outcome, evaluation.snapshot_id)
        if decision.promote:
            record_champion(client, cfg, version)
    return outcome


@dataclass
class _Evaluation:
    """One promotion's holdout, the candidate's report on it, and the reports of the champions met so far."""

    cfg: AppConfig
    snapshot_id: str
    holdout: Holdout
    candidate: EvalReport
    champions: dict[str, EvalReport]

    @classmethod
    def build(
        cls,
        cfg: AppConfig,
        version: str,
        snapshot_id: str | None,
        extra_segments: Mapping[str, Mapping[str, str]] | None,
    ) -> "_Evaluation":
        from aisys.data.lake import Lake
        from aisys.registry.mlflow_registry import load_bundle

        lake = Lake.from_config(cfg.paths)
        manifest = lake.get(snapshot_id) if snapshot_id else lake.latest()
        if manifest is None:
            raise FileNotFoundError(f"the lake at {cfg.paths.lake_uri} has no snapshot to build a holdout from")
        events = lake.read_events(manifest.snapshot_id)
        holdout = build_holdout(events, manifest.snapshot_id, cfg.features.event_weights, extra_segments)
        candidate_bundle, _ = load_bundle(cfg, version=version)
        candidate = report_for_bundle(candidate_bundle, holdout, version, cfg.train.torch_threads)
        return cls(cfg, manifest.snapshot_id, holdout, candidate, {})

    def report(self, champion_version: str | None) -> EvalReport | None:
        """The champion's report on this holdout (None without a champion), computed once per version."""
        from aisys.registry.mlflow_registry import load_bundle

        if champion_version is None:
            return None
        if champion_version not in self.champions:
            bundle, _ = load_bundle(self.cfg, version=champion_version)
            self.champions[champion_version] = report_for_bundle(
                bundle, self.holdout, champion_version, self.cfg.train.torch_threads
            )
        return self.champions[champion_version]
