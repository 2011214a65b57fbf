"""Evaluate what ships: train the default model kind as `aisys train` does, then rank through the serving path.

A stage composition over :mod:`aisys.pipeline` and serving (its own row of the package map, beside the loop,
below the faces that call it): the offline protocol's split
(:mod:`aisys.quality.protocol`) decides what the model may see and what it is tested on; training is
:func:`aisys.training.pipeline.train_model`, the function `aisys train` runs (or
:func:`aisys.pipeline.train_and_register` with ``register``); every test user's top-100 comes from the serving
:class:`~aisys.serving.recommender.Recommender` (the object a Serve replica holds), one
:class:`~aisys.serving.recommender.ScoreRequest` per user with ``now`` = the time of the user's first event after
their known history, so the gap feature is the one a replica would compute. The metrics are those of
:mod:`aisys.quality.ranking` on those lists, so the offline figures are the served model's figures.

What training sees, per split:

- ``loo``: every event. Training makes the same leave-last-one-out split (one rule,
  :func:`~aisys.quality.protocol.leave_last_one_out`): SASRec and the blend see ``h[:-2]`` and the valid item
  ``h[-2]``, the closed-form generators are refit on ``h[:-1]``; nothing is fit on the test item ``h[-1]``.
- ``temporal``: the events up to the protocol's cut (ties in train), exactly what a snapshot taken at the cut holds;
  training splits them leave-last-one-out internally to tune the blend. The test targets are each user's new items
  after the cut (:func:`~aisys.quality.protocol.temporal_task`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aisys.config import AppConfig
from aisys.quality.protocol import (
    EvalTask,
    Interactions,
    interactions_from_events,
    item_popularity,
    split_tasks,
    temporal_cut,
    time_order,
)
from aisys.quality.ranking import UserMetrics, summarize, user_metrics
from aisys.schemas import TIMESTAMP_TYPE

EXPORT_DEPTH = 100
K = 10
# Interaction timestamps are int64 in the event schema's unit (microseconds); sessions hold seconds.
_UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[TIMESTAMP_TYPE.unit]


@dataclass
class ServedLists:
    """Each test user's ranked item ids as the serving Recommender returned them, and the protocol's metrics."""

    users: list[str]
    item_ids: list[list[str]]  # per user, best first (at most EXPORT_DEPTH)
    fallback: list[bool]  # per user: the Recommender served its popularity fallback (no known item)
    metrics: dict[str, float]
    per_user: UserMetrics


@dataclass
class ShippedEvaluation:
    """The default kind trained on a split's training events, and its test lists through the serving path."""

    split: str
    seed: int
    bundle: Any  # the ModelBundle training produced (the one that would ship)
    lists: ServedLists
    training_metrics: dict[str, float]  # what training itself logged (test_* on its own LOO, valid_gain_*, ...)
    train_seconds: float
    score_seconds: float
    test_task: EvalTask
    registered: dict[str, str] = field(default_factory=dict)  # run_id, name, version when --register

    @property
    def test_metrics(self) -> dict[str, float]:
        return self.lists.metrics


def training_events(events: pa.Table, data: Interactions, split: str) -> pa.Table:
    """The events a model of ``split`` may be trained on (see the module docstring)."""
    if split == "loo":
        return events
    if split == "temporal":
        stamps = pc.cast(events.column("timestamp"), pa.int64())
        return events.filter(pc.less_equal(stamps, temporal_cut(data.timestamps)))
    raise ValueError(f"split must be 'loo' or 'temporal', got {split!r}")


def request_sessions(data: Interactions, task: EvalTask) -> tuple[list[Any], list[float]]:
    """Per evaluated user of ``task``: the serving session of their known history (item ids, the newest event's
    time) and the request time (their first interaction after that history: the target's time under LOO)."""
    from aisys.serving.session_store import UserSession

    stamps: dict[str, list[int]] = {}
    for row in time_order(data.timestamps):
        stamps.setdefault(str(data.users[row]), []).append(int(data.timestamps[row]))
    sessions, now = [], []
    for user in task.users:
        history = task.train.get(user, [])
        times = stamps.get(user, [])
        if not history or len(times) <= len(history):
            raise ValueError(f"task {task.name!r}: user {user!r} has no known history or no event after it")
        last, request = times[len(history) - 1], times[len(history)]
        sessions.append(UserSession(items=tuple(data.item_ids[i] for i in history),
                                    last_event_time=last / _UNITS_PER_SECOND))
        now.append(request / _UNITS_PER_SECOND)
    return sessions, now


@dataclass(frozen=True)
class LiveEvents:
    """Events that reach serving after the training snapshot: item ids and times (seconds), in time order."""

    item_ids: list[str] = field(default_factory=list)
    times_s: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.item_ids)


def events_after_training(data: Interactions, split: str) -> LiveEvents:
    """The events a deployed model trained on ``split``'s training events would be told of afterwards, live
    (``POST /events``): none under ``loo`` (the snapshot holds every event), the test period under ``temporal``."""
    if split == "loo":
        return LiveEvents()
    if split != "temporal":
        raise ValueError(f"split must be 'loo' or 'temporal', got {split!r}")
    rows = time_order(data.timestamps)
    rows = rows[data.timestamps[rows] > temporal_cut(data.timestamps)]
    return LiveEvents([data.item_ids[i] for i in data.items[rows]],
                      data.timestamps[rows].astype(np.float64) / _UNITS_PER_SECOND)


def served_lists(recommender: Any, data: Interactions, task: EvalTask, depth: int = EXPORT_DEPTH,
                 batch: int = 256, live: LiveEvents | None = None) -> ServedLists:
    """Ask ``recommender`` (a serving Recommender) for each test user's top-``depth``, excluding their known
    history (the protocol's rule; a replica with ``online.exclude: seen``), and score the lists.

    ``live`` events are told to the recommender (``observe_event``, as a replica is of every posted event) in time
    order, each before every request later than it and after the others: the requests are answered in time order.
    """
    from aisys.serving.recommender import ScoreRequest

    sessions, now = request_sessions(data, task)
    requests = [ScoreRequest(s, depth, frozenset(s.items), t) for s, t in zip(sessions, now)]
    answers: list[Any] = [None] * len(requests)
    if live is not None and len(live):
        order = np.argsort(np.asarray(now), kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(np.asarray(now)[order])) + 1)
    else:
        groups = [np.arange(start, min(start + batch, len(requests))) for start in range(0, len(requests), batch)]
    told = 0
    for group in groups:
        if live is not None and len(live):
            upto = int(np.searchsorted(live.times_s, now[group[0]], side="left"))  # strictly before the request
            for item, t in zip(live.item_ids[told:upto], live.times_s[told:upto]):
                recommender.observe_event(item, float(t))
            told = max(told, upto)
        for row, answer in zip(group, recommender.recommend_many([requests[i] for i in group])):
            answers[row] = answer
    ids = [[item.item_id for item in answer.items] for answer in answers]
    return ServedLists(list(task.users), ids, [a.fallback for a in answers],
                       *list_metrics(ids, data, task))


def list_metrics(ids: Sequence[Sequence[str]], data: Interactions, task: EvalTask,
                 k: int = K) -> tuple[dict[str, float], UserMetrics]:
    """The protocol's metrics (:func:`aisys.quality.ranking.user_metrics`) of ranked id lists.

    A list becomes a score vector: its items score ``len(list) .. 1`` in order, every other item 0, and a target
    off the list -inf, so it ranks after every other candidate (with lists of ``EXPORT_DEPTH`` >= ``k`` items,
    a miss). Ids outside the catalogue are ignored.
    """
    index = {item: i for i, item in enumerate(data.item_ids) if i}
    scores = np.zeros((len(ids), data.n_items + 1))
    for u, row in enumerate(ids):
        positions = [index[i] for i in row if i in index]
        listed = set(positions)
        off_list = [t for t in task.targets[u] if t not in listed]
        scores[u, off_list] = -np.inf
        scores[u, positions] = np.arange(len(positions), 0, -1, dtype=np.float64)
    per_user = user_metrics(scores, task.targets, task.histories(), k)
    return summarize(per_user, task.n_items, k, item_popularity(task)), per_user


def evaluate_shipped(
    cfg: AppConfig, events: pa.Table, catalogue_ids: Sequence[str], split: str, register: bool = False,
    on_step: Callable[[str], None] | None = None, on_epoch: Callable[[dict], None] | None = None,
) -> ShippedEvaluation:
    """Train ``cfg.model.kind`` on ``split``'s training events as `aisys train` does, and score the test task
    through the serving Recommender (see the module docstring). ``register`` also logs and registers the model
    (no alias: nothing is promoted); by default nothing is written to the registry."""
    from aisys.serving.recommender import Recommender, retrieval_options

    step = on_step or (lambda name: None)
    data = interactions_from_events(events, catalogue_ids)
    _, test = split_tasks(data, split)
    if len(test) == 0:
        raise ValueError(f"the {split} split has no user to evaluate: too few interactions")
    train_events = training_events(events, data, split)
    snapshot_id = f"ml-100k-{split}"
    started = time.perf_counter()
    registered: dict[str, str] = {}
    if register:
        from aisys.pipeline import train_and_register

        outcome = train_and_register(cfg, train_events, snapshot_id, promote=False, on_epoch=on_epoch, on_step=step)
        bundle, logged = outcome.bundle, {f"test_{k}": v for k, v in outcome.metrics.items()}
        registered = {"run_id": outcome.run_id, "name": outcome.model_name, "version": outcome.model_version}
    else:
        from aisys.training.pipeline import train_model

        trained = train_model(cfg, train_events, snapshot_id, on_epoch=on_epoch, on_step=step)
        bundle, logged = trained.bundle, dict(trained.logged)
    train_seconds = time.perf_counter() - started
    step("serve")
    started = time.perf_counter()
    recommender = Recommender(bundle, torch_threads=cfg.train.torch_threads, **retrieval_options(cfg.online))
    lists = served_lists(recommender, data, test, live=events_after_training(data, split))
    return ShippedEvaluation(split, cfg.train.seed, bundle, lists, logged, train_seconds,
                             time.perf_counter() - started, test, registered)


def stage_ablation(cfg: AppConfig, bundle: Any, data: Interactions, task: EvalTask,
                   live: LiveEvents | None = None) -> dict[str, dict[str, float]]:
    """Test metrics of the multi-stage blend with each generator dropped (its weight 0 in every gap bucket),
    through the serving Recommender; plus ``without gap_bucket`` (the came-back bucket's weights replaced by the
    everyone bucket's). Empty for a bundle that is not a multi-stage blend."""
    from aisys.serving.recommender import Recommender

    config = getattr(bundle, "model_config", {}) or {}
    blend = config.get("blend")
    if bundle.model_kind != "multistage" or not blend:
        return {}
    variants: dict[str, dict] = {}
    for j, stage in enumerate(blend["stages"]):
        weights = [list(w) for w in blend["bucket_weights"]]
        if not any(w[j] > 0 for w in weights):
            continue
        for w in weights:
            w[j] = 0.0
        if any(any(v > 0 for v in w) for w in weights):
            variants[f"without {stage}"] = {**blend, "bucket_weights": weights}
    if len(blend["bucket_weights"]) > 1:
        first = list(blend["bucket_weights"][0])
        variants["without gap_bucket"] = {**blend, "bucket_weights": [first] * len(blend["bucket_weights"])}
    out = {}
    for name, changed in variants.items():
        variant = replace(bundle, model_config={**config, "blend": changed})
        recommender = Recommender(variant, torch_threads=cfg.train.torch_threads)
        out[name] = served_lists(recommender, data, task, live=live).metrics
    return out


def export_lists(lists: ServedLists) -> pa.Table:
    """Rows ``user_id, rank (1-based), item_id`` (the schema of :func:`aisys.evaluation.export.export_table`)."""
    users, ranks, items = [], [], []
    for user, row in zip(lists.users, lists.item_ids):
        users += [user] * len(row)
        ranks += range(1, len(row) + 1)
        items += row
    return pa.table({"user_id": pa.array(users, pa.string()), "rank": pa.array(ranks, pa.int32()),
                     "item_id": pa.array(items, pa.string())})
