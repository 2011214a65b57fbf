"""The gate's holdout and the reports on it (pure: numpy, pyarrow and torch; no MLflow, no Ray).

:func:`build_holdout` turns a lake snapshot's events into one leave-last-one-out test holdout (each user's last
interaction is the target, the rest the input) with segment buckets, each user's request time (the target's
time: the request comes when the user's next event does, as in :mod:`aisys.shipped_evaluation`) and request gap (that
time minus the newest input event's: :func:`aisys.features.context.seconds_since_last_event`, what serving computes
from the request's clock); :func:`report_for_bundle` scores a model bundle on it through the bundle's own scorer
(:func:`aisys.models.multistage.build_scorer`, the code a replica serves with; a scorer that reads the request time,
such as the learned ranking stage's item activity as of the request, gets it as the serving
:class:`~aisys.serving.recommender.Recommender` passes ``now``) into the
:class:`~aisys.registry.gate.EvalReport` the gate compares. Two models scored on one holdout are compared user for
user: the same users, targets and segment labels, in one order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from aisys.quality.segments import HEAD_SHARE, TORSO_SHARE
from aisys.registry.gate import EvalReport, nonfinite_tensors

K = 10
HOLDOUT_KIND = "loo-test"
ACTIVITY_BUCKETS = ("light", "medium", "heavy")
# Target-item popularity buckets: HEAD_SHARE, TORSO_SHARE (share of catalogue items, ranked by interactions, in
# each) are the evaluation's segment shares, imported above: one definition for the runner and the gate.


@dataclass
class Holdout:
    """Users, their input histories and held-out targets (external item ids), and their segment buckets."""

    holdout_id: str
    users: list[str]
    histories: list[list[str]]
    targets: list[str]
    catalogue: list[str]  # the snapshot's items, in vocabulary order (index i + 1)
    popularity: list[float]  # per catalogue item, event-weighted (cfg.features.event_weights)
    segments: dict[str, list[str]]  # segment name -> bucket label per user
    # Seconds from each user's newest input event to their target's time (the request gap); empty: unknown.
    gaps: list[float] = field(default_factory=list)
    # Each user's request time (seconds since the epoch: their target's time); empty: unknown.
    request_times: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.users)


def activity_buckets(lengths: Sequence[int]) -> list[str]:
    """Terciles of history length: ``light`` / ``medium`` / ``heavy`` (ties stay in the lower bucket)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    if lengths.size == 0:
        return []
    low, high = np.quantile(lengths, [1 / 3, 2 / 3])
    return [ACTIVITY_BUCKETS[0] if n <= low else ACTIVITY_BUCKETS[1] if n <= high else ACTIVITY_BUCKETS[2]
            for n in lengths]


def popularity_buckets(
    targets: Sequence[str], histories: Sequence[Sequence[str]], catalogue: Sequence[str]
) -> list[str]:
    """Bucket each target by its item's interactions in the holdout's input histories.

    ``head``: the top 10% of catalogue items; ``torso``: the next 40%; ``tail``: the rest (never-seen included).
    Counting inputs only keeps the targets themselves out of the popularity they are bucketed by.
    """
    counts: dict[str, int] = dict.fromkeys(catalogue, 0)
    for history in histories:
        for item in history:
            counts[item] = counts.get(item, 0) + 1
    ranked = sorted(counts, key=lambda item: (-counts[item], item))
    n = len(ranked)
    head_end, torso_end = int(np.ceil(HEAD_SHARE * n)), int(np.ceil((HEAD_SHARE + TORSO_SHARE) * n))
    rank = {item: r for r, item in enumerate(ranked)}
    return ["head" if rank.get(t, n) < head_end else "torso" if rank.get(t, n) < torso_end else "tail"
            for t in targets]


def build_holdout(
    events: pa.Table,
    snapshot_id: str,
    event_weights: Mapping[str, float],
    extra_segments: Mapping[str, Mapping[str, str]] | None = None,
) -> Holdout:
    """The leave-last-one-out test holdout of ``events`` (lake snapshot ``snapshot_id``), with segments.

    ``extra_segments`` maps a segment name to ``{user_id: bucket}`` (users missing from it get ``unknown``).
    """
    from aisys.features.sequences import build_vocabulary, user_histories
    from aisys.quality.protocol import leave_last_one_out

    from aisys.features.context import seconds_since_last_event, user_history_times

    vocab = build_vocabulary(events, dict(event_weights))
    test = leave_last_one_out(user_histories(events, vocab.item_index())).test
    times = user_history_times(events, vocab.item_index())  # aligned with the histories split above
    if len(test) == 0:
        raise ValueError(f"snapshot {snapshot_id!r}: no user has the 3 interactions a holdout needs")
    ids = vocab.item_ids
    histories = [[ids[i] for i in h] for h in test.histories]
    targets = [ids[int(i)] for i in test.targets]
    catalogue = ids[1:]
    segments = {
        "user_activity": activity_buckets([len(h) for h in histories]),
        "target_popularity": popularity_buckets(targets, histories, catalogue),
    }
    for name, mapping in (extra_segments or {}).items():
        segments[name] = [str(mapping.get(user, "unknown")) for user in test.users]
    return Holdout(
        holdout_id=f"{snapshot_id}/{HOLDOUT_KIND}",
        users=list(test.users),
        histories=histories,
        targets=targets,
        catalogue=catalogue,
        popularity=list(vocab.item_popularity[1:]),
        segments=segments,
        # The input is every event but the last: its newest is times[-2], the request comes at the target's times[-1].
        gaps=[seconds_since_last_event(times[user][-2], times[user][-1]) for user in test.users],
        request_times=[times[user][-1] for user in test.users],
    )


def evaluate_on_holdout(
    model: Any, item_ids: Sequence[str], max_seq_len: int, holdout: Holdout, k: int = K, batch_size: int = 256
) -> tuple[dict[str, float], dict[str, dict[str, dict[str, float]]], np.ndarray]:
    """Full-ranking metrics of ``model`` (vocabulary ``item_ids``, index 0 = padding) on ``holdout``.

    ``model`` is a scorer (``score_sessions(histories, gaps_s[, now_s])``, :mod:`aisys.models.multistage`; it gets
    ``holdout.gaps``, and ``holdout.request_times`` as ``now_s`` when it reads the request time:
    ``uses_request_time``, the rule of the serving Recommender) or a next-item model (``score_next(windows)``, fed
    the recent windows).
    Returns ``(metrics, segments, ranks)``: the first two in the gate's shape, and each holdout user's 0-based
    target rank (a miss ranks at the catalogue size), which lets the gate pair users across models. Rules as in :mod:`aisys.quality.ranking` (history
    excluded, ties pessimistic) plus: a NaN score ranks last (a NaN never compares, so it would otherwise beat
    the target), and a target outside the model's vocabulary is a miss. Coverage and popularity are measured
    in the snapshot's catalogue, the same yardstick for every model.
    """
    from aisys.features.sequences import recent_window
    from aisys.quality.ranking import summarize_ranks, target_ranks, top_k_items
    from aisys.training.loop import score_windows

    index = {item: i for i, item in enumerate(item_ids) if i > 0}
    catalogue_index = {item: i + 1 for i, item in enumerate(holdout.catalogue)}
    n_catalogue = len(holdout.catalogue)
    ranks = np.full(len(holdout), n_catalogue, dtype=np.int64)  # default: a miss
    recommended = np.zeros((len(holdout), k), dtype=np.int64)  # catalogue indices; 0 = none / unknown item
    gaps = _per_user(holdout.gaps, len(holdout))
    now = _per_user(holdout.request_times, len(holdout))
    timed = callable(getattr(model, "score_sessions", None)) and getattr(model, "uses_request_time", False)
    for start in range(0, len(holdout), batch_size):
        rows = slice(start, start + batch_size)
        hist = [[index[i] for i in h if i in index] for h in holdout.histories[rows]]
        if timed:
            scores = np.asarray(model.score_sessions(hist, gaps[rows], now[rows]), dtype=np.float64)  # (B, V)
        elif callable(getattr(model, "score_sessions", None)):
            scores = np.asarray(model.score_sessions(hist, gaps[rows]), dtype=np.float64)  # (B, V)
        else:
            windows = np.stack([recent_window(h, max_seq_len) for h in hist])
            scores = np.asarray(score_windows(model, windows), dtype=np.float64)  # (B, V)
        scores = np.where(np.isnan(scores), -np.inf, scores)
        targets = np.array([index.get(t, 0) for t in holdout.targets[rows]], dtype=np.int64)
        known = np.flatnonzero(targets > 0)
        if known.size:
            ranks[start + known] = target_ranks(scores[known], targets[known], [hist[i] for i in known])
        top = top_k_items(scores, k, hist)  # (B, <=k) model indices
        mapped = np.vectorize(lambda i: catalogue_index.get(item_ids[i], 0), otypes=[np.int64])(top)
        recommended[start : start + len(hist), : mapped.shape[1]] = mapped
    popularity = np.asarray([0.0] + list(holdout.popularity))
    metrics = summarize_ranks(ranks, recommended, n_catalogue, k, popularity)
    shown = recommended[recommended > 0]
    metrics[f"coverage@{k}"] = float(np.unique(shown).size / n_catalogue) if n_catalogue else 0.0
    segments: dict[str, dict[str, dict[str, float]]] = {}
    for name, labels in holdout.segments.items():
        labels_arr = np.asarray(labels, dtype=object)
        segments[name] = {}
        for bucket in sorted(set(labels)):
            mask = labels_arr == bucket
            seg = summarize_ranks(ranks[mask], recommended[mask], n_catalogue, k)
            segments[name][bucket] = {m: seg[m] for m in (f"ndcg@{k}", f"hr@{k}", f"mrr@{k}", "n_users")}
    return metrics, segments, ranks


def _per_user(values: Sequence[float], n_users: int) -> np.ndarray:
    """(n_users,) float64 of a per-user holdout column; all NaN (unknown) when the holdout does not carry it."""
    return np.asarray(values if len(values) == n_users else [np.nan] * n_users, dtype=np.float64)


def report_for_bundle(bundle, holdout: Holdout, version: str | None = None, torch_threads: int = 1) -> EvalReport:
    """The gate's :class:`EvalReport` of a :class:`~aisys.models.bundle.ModelBundle` on ``holdout``, scored through
    the bundle's own scorer (any model kind; a multi-stage bundle's generator arrays are checked for NaN too)."""
    import torch

    from aisys.models.multistage import build_scorer, bundle_arrays_nonfinite

    bad_weights = nonfinite_tensors(bundle.state_dict or {}) + bundle_arrays_nonfinite(bundle)
    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)  # more threads on a busy small box is slower (STACK.md)
    try:
        scorer = build_scorer(bundle)
        if scorer is None:
            raise ValueError("the bundle carries no model weights: the gate has nothing to score")
        metrics, segments, ranks = evaluate_on_holdout(scorer, bundle.item_ids, bundle.max_seq_len, holdout)
    finally:
        torch.set_num_threads(before)
    buckets = {name: [str(label) for label in labels] for name, labels in holdout.segments.items()}
    return EvalReport(metrics, holdout.holdout_id, segments, bad_weights, version, [int(r) for r in ranks], buckets)
