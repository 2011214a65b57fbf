"""Promotion and rollback: the adapter that runs the pure gate (:mod:`aisys.registry.gate`) on registered models.

``promote(cfg, version)``:

1. resolve the candidate (``version``, default the version behind ``cfg.online.challenger_alias``) and the
   current champion (``cfg.registry.champion_alias``; none is fine);
2. build **one** holdout from a lake snapshot (latest by default): each user's last interaction as target after
   the rest, i.e. the test part of :func:`~aisys.training.split.leave_last_one_out`, with segments computed from
   the events (user activity, target-item popularity) plus any ``extra_segments`` (gender, age band, ...);
3. evaluate both models on it with full ranking in the snapshot's item-id space (each model maps ids through its
   own vocabulary; a target a model does not know is a miss), so the numbers are comparable;
4. :func:`~aisys.registry.gate.decide`, log the decision as an MLflow run (params, both models' metrics,
   ``decision.json``, tag ``aisys.decision=promote|refuse``), and on promote move the champion alias.

Every champion change made here is appended to the registered model's tag ``aisys.champion_history`` (a JSON list
of versions, oldest first) and stamps the version's tag ``aisys.champion_since``; :func:`rollback` walks that
history back one step in a few registry calls.

**Concurrency.** Reading the champion, gating against it and moving the alias is a read-modify-write: two
promotions running at once would both gate against the same champion and both move the alias (the last one wins,
unjudged against the first, and one history entry is lost). So every champion change (:func:`promote`'s
decision, :func:`make_champion`, :func:`rollback`) runs under one lock per registered model
(:func:`promotion_lock`; the file sits next to the SQLite DB). The slow part, evaluating the candidate and the
champion it saw first, runs outside the lock; under the lock the champion is read again and, if it moved
meanwhile, the candidate is gated again against the **current** one (``champion_changed``). The decisions
logged in MLflow therefore form one linear history: each promotion names the champion it replaced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from aisys.config import AppConfig
from aisys.registry.gate import EvalReport, GateDecision, decide, nonfinite_tensors
from aisys.registry.lock import DEFAULT_TIMEOUT_S, file_lock, registry_lock_path

K = 10
HOLDOUT_KIND = "loo-test"
HISTORY_TAG = "aisys.champion_history"
CHAMPION_SINCE_TAG = "aisys.champion_since"
ROLLED_BACK_TAG = "aisys.rolled_back_at"
DECISION_TAG = "aisys.decision"
_HISTORY_KEEP = 50  # keeps the tag value far below MLflow's length limit
ACTIVITY_BUCKETS = ("light", "medium", "heavy")
# Target-item popularity buckets: share of catalogue items (ranked by interactions) in each.
HEAD_SHARE, TORSO_SHARE = 0.10, 0.40


# --------------------------------------------------------------------------- pure: holdout and evaluation


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
    from aisys.training.split import leave_last_one_out

    vocab = build_vocabulary(events, dict(event_weights))
    test = leave_last_one_out(user_histories(events, vocab.item_index())).test
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
    )


def evaluate_on_holdout(
    model: Any, item_ids: Sequence[str], max_seq_len: int, holdout: Holdout, k: int = K, batch_size: int = 256
) -> tuple[dict[str, float], dict[str, dict[str, dict[str, float]]], np.ndarray]:
    """Full-ranking metrics of ``model`` (vocabulary ``item_ids``, index 0 = padding) on ``holdout``.

    Returns ``(metrics, segments, ranks)``: the first two in the gate's shape, and each holdout user's 0-based
    target rank (a miss ranks at the catalogue size), which lets the gate pair users across models. Rules as in :mod:`aisys.training.metrics` (history
    excluded, ties pessimistic) plus: a NaN score ranks last (a NaN never compares, so it would otherwise beat
    the target), and a target outside the model's vocabulary is a miss. Coverage and popularity are measured
    in the snapshot's catalogue, the same yardstick for every model.
    """
    from aisys.features.sequences import recent_window
    from aisys.training.loop import score_windows
    from aisys.training.metrics import summarize_ranks, target_ranks, top_k_items

    index = {item: i for i, item in enumerate(item_ids) if i > 0}
    catalogue_index = {item: i + 1 for i, item in enumerate(holdout.catalogue)}
    n_catalogue = len(holdout.catalogue)
    ranks = np.full(len(holdout), n_catalogue, dtype=np.int64)  # default: a miss
    recommended = np.zeros((len(holdout), k), dtype=np.int64)  # catalogue indices; 0 = none / unknown item
    for start in range(0, len(holdout), batch_size):
        rows = slice(start, start + batch_size)
        hist = [[index[i] for i in h if i in index] for h in holdout.histories[rows]]
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


def report_for_bundle(bundle, holdout: Holdout, version: str | None = None, torch_threads: int = 1) -> EvalReport:
    """The gate's :class:`EvalReport` of a :class:`~aisys.models.bundle.ModelBundle` on ``holdout``."""
    import torch

    from aisys.models.sasrec import build_model

    bad_weights = nonfinite_tensors(bundle.state_dict or {})
    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)  # more threads on a busy small box is slower (STACK.md)
    try:
        model = build_model(bundle)
        metrics, segments, ranks = evaluate_on_holdout(model, bundle.item_ids, bundle.max_seq_len, holdout)
    finally:
        torch.set_num_threads(before)
    buckets = {name: [str(label) for label in labels] for name, labels in holdout.segments.items()}
    return EvalReport(metrics, holdout.holdout_id, segments, bad_weights, version, [int(r) for r in ranks], buckets)


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _client(cfg: AppConfig):
    import mlflow

    from aisys.registry.mlflow_registry import configure_mlflow

    experiment_id = configure_mlflow(cfg)
    return mlflow.MlflowClient(), experiment_id


def _alias_version(client, cfg: AppConfig, alias: str) -> str | None:
    import mlflow

    try:
        return str(client.get_model_version_by_alias(cfg.registry.model_name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def _require_version(client, name: str, version: str) -> None:
    import mlflow

    try:
        client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as err:
        raise LookupError(f"model {name!r} has no version {version!r}: pass a registered version number") from err


def champion_history(cfg: AppConfig) -> list[str]:
    """Versions that were made champion by :func:`promote` (or :func:`make_champion`), oldest first."""
    client, _ = _client(cfg)
    return _history(client, cfg.registry.model_name)


def _history(client, name: str) -> list[str]:
    tags = client.get_registered_model(name).tags or {}
    return [str(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]


def promotion_lock(cfg: AppConfig, timeout_s: float = DEFAULT_TIMEOUT_S):
    """The lock serialising champion changes of ``cfg.registry.model_name`` (threads and processes of a host).

    A context manager; see :mod:`aisys.registry.lock` for what it covers and what a multi-host setup needs.
    """
    path = registry_lock_path(cfg.paths.mlflow_tracking_uri, cfg.paths.workspace, cfg.registry.model_name)
    return file_lock(path, timeout_s)


def make_champion(cfg: AppConfig, version: str) -> None:
    """Move the champion alias to ``version``, recording it in the champion history.

    A champion set outside the gate (e.g. by ``aisys train``) is recorded first, so it can be rolled back to.
    The alias moves last: a failure before it leaves the old champion serving. Runs under
    :func:`promotion_lock`.
    """
    client, _ = _client(cfg)
    with promotion_lock(cfg):
        _make_champion(client, cfg, str(version))


def _make_champion(client, cfg: AppConfig, version: str) -> None:
    # The caller holds promotion_lock: the history read-modify-write below must not interleave.
    name = cfg.registry.model_name
    history = _history(client, name)
    current = _alias_version(client, cfg, cfg.registry.champion_alias)
    if current is not None and (not history or history[-1] != current):
        history.append(current)
    history.append(version)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-_HISTORY_KEEP:]))
    client.set_model_version_tag(name, version, CHAMPION_SINCE_TAG, _now())
    client.set_registered_model_alias(name, cfg.registry.champion_alias, version)


def rollback(cfg: AppConfig) -> tuple[str, str]:
    """Make the previous champion current again; return ``(from_version, to_version)``.

    The previous champion is the latest entry of the champion history that is not the current champion. The
    current one is dropped from the history (a second rollback goes one further back) and tagged
    ``aisys.rolled_back_at``. Runs under :func:`promotion_lock`, so it never interleaves with a promotion.
    """
    client, _ = _client(cfg)
    with promotion_lock(cfg):
        return _rollback(client, cfg)


def _rollback(client, cfg: AppConfig) -> tuple[str, str]:
    name, alias = cfg.registry.model_name, cfg.registry.champion_alias
    current = _alias_version(client, cfg, alias)
    if current is None:
        raise LookupError(f"model {name!r} has no {alias!r} alias: nothing to roll back")
    remaining = _history(client, name)
    while remaining and remaining[-1] == current:
        remaining.pop()
    if not remaining:
        raise LookupError(
            f"no earlier champion of {name!r} is recorded (tag {HISTORY_TAG}): version {current} stays {alias!r}"
        )
    target = remaining[-1]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(remaining))
    client.set_model_version_tag(name, current, ROLLED_BACK_TAG, _now())
    client.set_model_version_tag(name, target, CHAMPION_SINCE_TAG, _now())
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
    client, experiment_id = _client(cfg)
    if version is None:
        version = _alias_version(client, cfg, cfg.online.challenger_alias)
        if version is None:
            raise LookupError(
                f"no --version given and no version of {cfg.registry.model_name!r} has alias "
                f"{cfg.online.challenger_alias!r}: run `aisys tune` or pass a version"
            )
    version = str(version)
    _require_version(client, cfg.registry.model_name, version)

    # Optimistic part, outside the lock: evaluate the candidate and the champion seen now (the slow work).
    seen_champion = _alias_version(client, cfg, cfg.registry.champion_alias)
    evaluation = None
    if seen_champion != version:
        evaluation = _Evaluation.build(cfg, version, snapshot_id, extra_segments)
        evaluation.report(seen_champion)

    with promotion_lock(cfg, lock_timeout_s):
        # Compare-and-set: decide against the champion as it is now, which may have moved since.
        champion_version = _alias_version(client, cfg, cfg.registry.champion_alias)
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
            _make_champion(client, cfg, version)
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

        lake = Lake(cfg.paths.lake_uri)
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
