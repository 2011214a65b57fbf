"""The promotion gate: may a candidate model replace the champion? (pure: no MLflow, no Ray, no torch)

:func:`decide` compares two :class:`EvalReport` s computed on the **same holdout** and returns a
:class:`GateDecision` whose ``checks`` list every rule with the numbers behind it and whose ``reasons`` say, in
words, why the candidate was promoted or refused. The rules (thresholds from :class:`~aisys.config.GateConfig`):

1. **Integrity** (checked first; if one fails, nothing else is compared because the numbers mean nothing):
   both reports are on the same ``holdout_id``; every required metric is present and finite in both; the
   candidate's weights hold no NaN/inf (``EvalReport.nonfinite_weights``).
2. **Primary metric**: ``candidate[metric] >= champion[metric] * (1 + min_improvement)`` and strictly above the
   champion's (an identical model is not an improvement).
3. **Coverage**: ``candidate["coverage@10"] >= min_coverage`` (absolute, judged even without a champion).
4. **Popularity bias**: ``candidate["popularity@10"] <= max_popularity_ratio * champion["popularity@10"]``.
5. **Segments**: in every segment bucket where the champion's report has ``>= min_segment_users`` users, the
   candidate's ``metric`` is at least ``champion * (1 - segment_tolerance)``. Smaller buckets are listed as not
   judged. When both reports carry per-user ranks (``user_ranks`` and ``user_buckets``, as
   :func:`~aisys.registry.holdout.report_for_bundle` fills them) and ``segment_alpha > 0``, a bucket below
   that floor fails only if the shortfall is **significant**: a one-sided paired test over the bucket's users
   (see :func:`segment_shortfall_p_value`). A bucket of a few hundred users holds a few dozen hits, so a
   retrained model's NDCG@10 there moves by tens of percent from noise alone; without the test the gate
   refuses models that help online (measured on the replay, ``docs/loop.md``).

Without a champion, rules 2, 4 and 5 have nothing to compare against: the candidate is promoted when the
integrity and coverage checks pass, and the reasons say so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from aisys.config import GateConfig
from aisys.quality.ranking import per_user_rank_metrics

K = 10
COVERAGE = f"coverage@{K}"
POPULARITY = f"popularity@{K}"
N_USERS = "n_users"
PER_USER_METRICS = ("ndcg", "hr", "mrr")  # what per_user_metric computes from a rank
REQUIRED_METRICS = (f"ndcg@{K}", f"hr@{K}", f"mrr@{K}", COVERAGE, POPULARITY, N_USERS)

# Segment metrics: {segment name: {bucket label: {"ndcg@10": ..., "n_users": ...}}}
SegmentMetrics = dict[str, dict[str, dict[str, float]]]


@dataclass
class EvalReport:
    """One model's evaluation on one holdout: what the gate compares.

    ``metrics`` holds at least :data:`REQUIRED_METRICS`; ``segments`` the per-bucket metrics (any segmentation:
    user activity, item popularity, gender, ...); ``nonfinite_weights`` the names of weight tensors holding
    NaN/inf (see :func:`nonfinite_tensors`); ``model_version`` is for messages only.
    """

    metrics: dict[str, float]
    holdout_id: str
    segments: SegmentMetrics = field(default_factory=dict)
    nonfinite_weights: list[str] = field(default_factory=list)
    model_version: str | None = None
    # Per holdout user, in the holdout's order (the same for every report on one holdout_id): the target's
    # 0-based rank, and each segment's bucket. They let the gate pair users; left out of to_dict (size).
    user_ranks: list[int] = field(default_factory=list)
    user_buckets: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (non-finite numbers become strings); the per-user lists are summarised by count."""
        data = asdict(self)
        data.pop("user_buckets")
        data["user_ranks"] = len(data["user_ranks"])
        return jsonable(data)


@dataclass
class Check:
    """One rule's outcome, with the numbers it compared (``None`` where a side has no number)."""

    name: str
    passed: bool
    candidate: float | None = None
    champion: float | None = None
    threshold: float | None = None
    detail: str = ""


@dataclass
class GateDecision:
    """Promote or refuse, why (``reasons``, human sentences) and every check behind it."""

    promote: bool
    reasons: list[str]
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (non-finite numbers become strings: JSON has no NaN)."""
        return jsonable(asdict(self))


def jsonable(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its string (``"nan"``, ``"inf"``), recursively."""
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else str(float(value))
    return value


def nonfinite_tensors(state_dict: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``state_dict`` that hold a NaN or an infinity.

    Works on torch tensors and numpy arrays alike (both convert with ``np.asarray`` on CPU). NaN weights would
    make every score NaN, and a NaN score never compares ``>=`` the target's, so the ranking metrics of a broken
    model can look perfect: this check is what stops it.
    """
    bad = []
    for name, value in state_dict.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu()
        array = np.asarray(value)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad.append(name)
    return bad


def per_user_metric(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Each user's ``ndcg@K`` / ``hr@K`` / ``mrr@K`` from the target's 0-based rank (a miss is 0)."""
    name, _, cutoff = metric.partition("@")
    if name not in PER_USER_METRICS:
        raise ValueError(f"gate.metric {metric!r} has no per-user form; use ndcg@K, hr@K or mrr@K")
    k = int(cutoff or K)
    return per_user_rank_metrics(ranks, k)[f"{name}@{k}"]


def segment_shortfall_p_value(candidate: np.ndarray, champion: np.ndarray, tolerance: float) -> float:
    """One-sided p-value that the candidate's mean is below ``(1 - tolerance)`` times the champion's.

    Paired over users: ``x_u = candidate_u - (1 - tolerance) * champion_u``; H0 is ``E[x] >= 0``, and the
    p-value is ``Phi(mean(x) / se(x))`` (normal approximation: a bucket holds at least ``min_segment_users``).
    Small means significant. With no spread at all the shortfall is certain (0.0) or absent (1.0).
    """
    x = np.asarray(candidate, dtype=np.float64) - (1.0 - tolerance) * np.asarray(champion, dtype=np.float64)
    mean = float(x.mean()) if x.size else 0.0
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else 0.0
    if se == 0.0:
        return 0.0 if mean < 0 else 1.0
    return 0.5 * (1.0 + math.erf(mean / se / math.sqrt(2.0)))


def _paired_users(candidate: EvalReport, champion: EvalReport) -> bool:
    n = len(champion.user_ranks)
    return n > 0 and len(candidate.user_ranks) == n and all(
        len(labels) == n for labels in champion.user_buckets.values()
    )


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(float(value))


def _label(report: EvalReport, role: str) -> str:
    return f"{role} (version {report.model_version})" if report.model_version else role


def _integrity_checks(candidate: EvalReport, champion: EvalReport | None) -> list[Check]:
    checks: list[Check] = []
    if champion is not None:
        same = candidate.holdout_id == champion.holdout_id
        checks.append(
            Check(
                "same_holdout",
                same,
                detail=(
                    f"both on holdout {candidate.holdout_id!r}"
                    if same
                    else f"candidate was evaluated on holdout {candidate.holdout_id!r} but the champion on "
                    f"{champion.holdout_id!r}: the reports are not comparable; evaluate both on one holdout"
                ),
            )
        )
    for role, report in (("candidate", candidate), ("champion", champion)):
        if report is None:
            continue
        missing = [m for m in REQUIRED_METRICS if m not in report.metrics]
        broken = [m for m, v in report.metrics.items() if not _is_finite(v)]
        bad_segments = [
            f"{seg}={bucket}.{m}"
            for seg, buckets in report.segments.items()
            for bucket, values in buckets.items()
            for m, v in values.items()
            if not _is_finite(v)
        ]
        problems = []
        if missing:
            problems.append(f"lacks metric(s) {missing}")
        if broken:
            problems.append("non-finite metric(s) " + ", ".join(f"{m}={report.metrics[m]}" for m in broken))
        if bad_segments:
            problems.append(f"non-finite segment metric(s) {bad_segments}")
        checks.append(
            Check(
                f"{role}_metrics_finite",
                not problems,
                detail=f"{_label(report, role)} "
                + ("; ".join(problems) if problems else "has every metric, all finite"),
            )
        )
    checks.append(
        Check(
            "candidate_weights_finite",
            not candidate.nonfinite_weights,
            detail=(
                f"{_label(candidate, 'candidate')} has NaN/inf in weight tensor(s) {candidate.nonfinite_weights}"
                if candidate.nonfinite_weights
                else "no NaN/inf in the candidate's weights"
            ),
        )
    )
    return checks


def _primary_check(candidate: EvalReport, champion: EvalReport, cfg: GateConfig) -> Check:
    metric = cfg.metric
    cand, champ = float(candidate.metrics[metric]), float(champion.metrics[metric])
    threshold = champ * (1.0 + cfg.min_improvement)
    passed = cand >= threshold and cand > champ
    change = f"{(cand - champ) / champ:+.2%}" if champ else "n/a (champion is 0)"
    return Check(
        f"beats_champion:{metric}",
        passed,
        cand,
        champ,
        threshold,
        f"{metric} {cand:.4f} vs champion {champ:.4f} ({change}); needs >= {threshold:.4f} "
        f"(+{cfg.min_improvement:.2%}) and above the champion",
    )


def _coverage_check(candidate: EvalReport, cfg: GateConfig) -> Check:
    value = float(candidate.metrics[COVERAGE])
    return Check(
        "coverage",
        value >= cfg.min_coverage,
        value,
        None,
        cfg.min_coverage,
        f"{COVERAGE} {value:.4f}; needs >= {cfg.min_coverage:.4f}",
    )


def _popularity_check(candidate: EvalReport, champion: EvalReport, cfg: GateConfig) -> Check:
    cand, champ = float(candidate.metrics[POPULARITY]), float(champion.metrics[POPULARITY])
    limit = champ * cfg.max_popularity_ratio
    return Check(
        "popularity_bias",
        cand <= limit,
        cand,
        champ,
        limit,
        f"{POPULARITY} {cand:.4g} vs champion {champ:.4g}; needs <= {limit:.4g} "
        f"({cfg.max_popularity_ratio:g}x the champion's)",
    )


def _segment_checks(candidate: EvalReport, champion: EvalReport, cfg: GateConfig) -> list[Check]:
    metric = cfg.metric
    paired = (
        cfg.segment_alpha > 0 and metric.partition("@")[0] in PER_USER_METRICS and _paired_users(candidate, champion)
    )
    if paired:
        cand_users = per_user_metric(np.asarray(candidate.user_ranks), metric)
        champ_users = per_user_metric(np.asarray(champion.user_ranks), metric)
    checks = []
    for segment, buckets in sorted(champion.segments.items()):
        for bucket, champ_values in sorted(buckets.items()):
            name = f"segment:{segment}={bucket}"
            n_users = int(champ_values.get(N_USERS, 0))
            if n_users < cfg.min_segment_users:
                checks.append(
                    Check(name, True, detail=f"not judged: {n_users} users < min_segment_users {cfg.min_segment_users}")
                )
                continue
            cand_values = candidate.segments.get(segment, {}).get(bucket)
            if cand_values is None or metric not in cand_values or metric not in champ_values:
                checks.append(
                    Check(name, False, detail=f"{metric} missing for segment {segment}={bucket} in a report")
                )
                continue
            cand, champ = float(cand_values[metric]), float(champ_values[metric])
            floor = champ * (1.0 - cfg.segment_tolerance)
            detail = (
                f"{metric} in {segment}={bucket} ({n_users} users) {cand:.4f} vs champion {champ:.4f}; "
                f"needs >= {floor:.4f} (tolerance {cfg.segment_tolerance:.0%})"
            )
            passed = cand >= floor
            if not passed and paired and segment in champion.user_buckets:
                mask = np.asarray(champion.user_buckets[segment], dtype=object) == bucket
                p_value = segment_shortfall_p_value(cand_users[mask], champ_users[mask], cfg.segment_tolerance)
                passed = p_value >= cfg.segment_alpha
                detail += (
                    f"; below it, {'but not' if passed else 'and'} significantly (paired one-sided "
                    f"p={p_value:.3f} {'>=' if passed else '<'} segment_alpha {cfg.segment_alpha:g} over "
                    f"{int(mask.sum())} users)"
                )
            checks.append(Check(name, passed, cand, champ, floor, detail))
    return checks


def decide(candidate: EvalReport, champion: EvalReport | None, cfg: GateConfig) -> GateDecision:
    """Decide whether ``candidate`` replaces ``champion`` (``None``: there is no champion yet).

    See the module docstring for the rules. ``reasons`` on a refusal are the failed checks' details; on a
    promotion, a summary of why.
    """
    integrity = _integrity_checks(candidate, champion)
    if any(not c.passed for c in integrity):
        return GateDecision(False, [c.detail for c in integrity if not c.passed], integrity)
    if champion is not None and not (cfg.metric in candidate.metrics and cfg.metric in champion.metrics):
        check = Check(
            f"beats_champion:{cfg.metric}", False, detail=f"gate.metric {cfg.metric!r} is missing from a report"
        )
        return GateDecision(False, [check.detail], integrity + [check])

    checks = list(integrity)
    if champion is None:
        checks.append(_coverage_check(candidate, cfg))
    else:
        checks.append(_primary_check(candidate, champion, cfg))
        checks.append(_coverage_check(candidate, cfg))
        checks.append(_popularity_check(candidate, champion, cfg))
        checks.extend(_segment_checks(candidate, champion, cfg))

    failed = [c for c in checks if not c.passed]
    if failed:
        return GateDecision(False, [c.detail for c in failed], checks)
    if champion is None:
        reasons = [
            f"no champion yet: {_label(candidate, 'candidate')} is promoted because its guardrails pass "
            f"({next(c.detail for c in checks if c.name == 'coverage')})"
        ]
    else:
        primary = next(c for c in checks if c.name.startswith("beats_champion"))
        judged = sum(1 for c in checks if c.name.startswith("segment:") and c.candidate is not None)
        reasons = [
            f"{_label(candidate, 'candidate')} beats {_label(champion, 'champion')}: {primary.detail}",
            f"guardrails pass: coverage, popularity bias and {judged} judged segment bucket(s)",
        ]
    return GateDecision(True, reasons, checks)
