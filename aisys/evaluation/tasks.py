"""Per-task inputs of time-aware and context-aware models, and scoring a fitted model on a task."""

from __future__ import annotations

import numpy as np

from aisys.evaluation.runner_settings import K
from aisys.models.baselines import Recommender
from aisys.models.context_blend import request_gaps
from aisys.quality.protocol import EvalTask, Interactions, item_popularity, time_order
from aisys.quality.ranking import UserMetrics, summarize, user_metrics
from aisys.schemas import TIMESTAMP_TYPE

# Interaction timestamps are int64 in the event schema's unit (microseconds); models take seconds.
_TIME_UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[TIMESTAMP_TYPE.unit]


def task_times(data: Interactions, task: EvalTask) -> dict[str, list[int]]:
    """Each user's train timestamps in seconds, aligned with ``task.train[user]`` (for time-aware models).

    Every task's train sequence is a prefix of the user's time-ordered interactions
    (leave-one-out drops the last one or two; temporal keeps those up to a cut).
    """
    items: dict[str, list[int]] = {}
    stamps: dict[str, list[int]] = {}
    for row in time_order(data.timestamps):
        user = str(data.users[row])
        items.setdefault(user, []).append(int(data.items[row]))
        stamps.setdefault(user, []).append(int(data.timestamps[row]) // _TIME_UNITS_PER_SECOND)
    times = {}
    for user, seq in task.train.items():
        if items.get(user, [])[: len(seq)] != list(seq):
            raise ValueError(f"task {task.name!r}: train of user {user!r} is not a prefix of their interactions")
        times[user] = stamps[user][: len(seq)]
    return times


def task_request_gaps(data: Interactions, task: EvalTask) -> np.ndarray:
    """Per evaluated user of ``task``: seconds from their newest train interaction to their request.

    The request time is that of the user's first interaction after their train
    prefix (leave-one-out: the target's; temporal: their first after the cut):
    when serving, a request carries its own time, so this is no look at the target item.
    """
    stamps: dict[str, list[int]] = {}
    for row in time_order(data.timestamps):
        stamps.setdefault(str(data.users[row]), []).append(int(data.timestamps[row]) // _TIME_UNITS_PER_SECOND)
    last, now = [], []
    for user in task.users:
        n = len(task.train.get(user, []))
        if n == 0 or n >= len(stamps.get(user, [])):
            raise ValueError(f"task {task.name!r}: user {user!r} has no train interaction or none after it")
        last.append(stamps[user][n - 1])
        now.append(stamps[user][n])
    return request_gaps(last, now)


def score_task(
    model: Recommender, task: EvalTask, k: int = K, gaps: np.ndarray | None = None
) -> tuple[dict[str, float], UserMetrics, np.ndarray]:
    """Metrics of a fitted model on ``task``, per-user results and its raw (U, n_items + 1) scores.

    ``gaps`` (:func:`task_request_gaps`) go to a model that uses the request's context (``uses_context``).
    """
    if len(task) == 0:
        raise ValueError(f"task {task.name!r} has no user to evaluate")
    histories = task.histories()
    if getattr(model, "uses_context", False):
        scores = model.score(task.users, histories, gaps=gaps)
    else:
        scores = model.score(task.users, histories)
    per_user = user_metrics(scores, task.targets, histories, k)
    return summarize(per_user, task.n_items, k, item_popularity(task)), per_user, scores

