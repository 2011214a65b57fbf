"""The offline evaluation protocol for MovieLens-100K (pure numpy; see docs/evaluation.md).

Interactions are every rating, whatever its value, in the source file's row
order. Items are indexed ``1..n_items`` over the whole catalogue (the item
file, not only rated items); index 0 is padding.

Two splits, each giving a *valid* task (tune on it) and a *test* task:

- **Leave-last-one-out** (:func:`leave_one_out_tasks`): each user's
  interactions sorted by timestamp, ties by row order (stable). Last = test
  target, second-last = valid target, the rest train. The valid task is fit on
  train; the test task is fit on train + valid. Users with fewer than 3
  interactions are train-only (never evaluated).
- **Global temporal** (:func:`temporal_tasks`): cut at the timestamp of the
  ``ceil(0.8 N)``-th interaction in time order; ties at the cut stay in train.
  Evaluated users have interactions on both sides; their targets are the
  distinct test-period items not in their train history (users left with no
  such item are not evaluated). The valid task applies the same rule inside
  train.

A task's ``train`` is exactly what a model is fit on, and each evaluated
user's known history (excluded from ranking, and the sequential model's input)
is their ``train`` sequence.

Training (``aisys train``, Tune trials) and the promotion gate's holdout use the
same leave-last-one-out rule on a lake snapshot's histories through
:func:`leave_last_one_out`, which :func:`leave_one_out_tasks` is built on: one
split, one rule. There, valid and test share one train (``h[:-2]``: one model,
validated on ``h[-2]`` and tested on ``h[-1]`` from input ``h[:-1]``), where the
runner's test task refits on ``h[:-1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MIN_LOO_INTERACTIONS = 3
TEMPORAL_TRAIN_SHARE = 0.8


@dataclass
class Interactions:
    """Every interaction as parallel arrays, in source row order (the tie-breaker)."""

    users: np.ndarray  # (N,) object: user ids as strings
    items: np.ndarray  # (N,) int64: item index 1..n_items
    timestamps: np.ndarray  # (N,) int64
    item_ids: list[str]  # catalogue: item_ids[i] is the external id of index i; item_ids[0] == ""

    @property
    def n_items(self) -> int:
        """Catalogue size (padding excluded)."""
        return len(self.item_ids) - 1

    def __len__(self) -> int:
        return int(self.items.size)

    def take(self, rows: np.ndarray) -> "Interactions":
        """The interactions at ``rows`` (a mask or sorted positions), row order kept."""
        return Interactions(self.users[rows], self.items[rows], self.timestamps[rows], self.item_ids)


@dataclass
class EvalSet:
    """Users to evaluate, one target each: each one's input history and the held-out next item."""

    users: list[str] = field(default_factory=list)
    histories: list[list[int]] = field(default_factory=list)
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # Every relevant item of each user (a time window's several, the first being ``targets``); None: the next only.
    all_targets: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class LooSplit:
    """Train sequences per user, plus the valid and test evaluation sets (see :func:`leave_last_one_out`)."""

    train: dict[str, list[int]]
    valid: EvalSet
    test: EvalSet


def leave_last_one_out(histories: Mapping[str, Sequence[int]]) -> LooSplit:
    """Split each user's history ``h``: test = (input ``h[:-1]``, target ``h[-1]``), valid = (``h[:-2]``,
    ``h[-2]``), train = ``h[:-2]`` (a model trained on it never sees the valid or test target).

    Users with fewer than :data:`MIN_LOO_INTERACTIONS` interactions go wholly to train and are in neither valid
    nor test: holding out one of two items would leave too little to predict from. Users keep the order of
    ``histories``.
    """
    train: dict[str, list[int]] = {}
    valid_users, valid_hist, valid_tgt = [], [], []
    test_users, test_hist, test_tgt = [], [], []
    for user, history in histories.items():
        history = list(history)
        if len(history) < MIN_LOO_INTERACTIONS:
            if history:
                train[user] = history
            continue
        train[user] = history[:-2]
        valid_users.append(user)
        valid_hist.append(history[:-2])
        valid_tgt.append(history[-2])
        test_users.append(user)
        test_hist.append(history[:-1])
        test_tgt.append(history[-1])
    return LooSplit(
        train=train,
        valid=EvalSet(valid_users, valid_hist, np.asarray(valid_tgt, dtype=np.int64)),
        test=EvalSet(test_users, test_hist, np.asarray(test_tgt, dtype=np.int64)),
    )


def time_cut_validation(
    split: LooSplit, times: Mapping[str, Sequence[float]], train_share: float = TEMPORAL_TRAIN_SHARE,
    keep_next_item: bool = False,
) -> LooSplit:
    """``split`` validated like the requests a deployed model answers: users coming back after the data it was
    trained on, their next items unknown in number (and, with ``keep_next_item``, the next-item requests too).

    The train + valid events (every user's history but the test item ``h[-1]``; short users wholly) are cut at
    the time of the ``ceil(train_share * N)``-th in time order (:func:`temporal_cut`; ties stay before). ``train``
    keeps only the events up to the cut. The *returning* requests are the users with events on both sides and an
    item after the cut not in their history: history = their events up to the cut, ``targets`` = the first such
    item, ``all_targets`` = every such item, distinct, in order. With ``keep_next_item`` the split's own next-item
    requests (``h[:-2]`` -> ``h[-2]``) come first, and ``train`` is also without each one's ``h[-2]``. ``test``
    is unchanged; nothing fit on ``train`` has seen a valid or a test item. ``times[u]`` are user ``u``'s event
    times in history order; a user may make two requests (both kinds), each with its own history.
    """
    before_test = {u: list(seq) for u, seq in split.train.items()}
    before_test.update({u: list(h) for u, h in zip(split.test.users, split.test.histories)})
    stamps = np.asarray([t for u, seq in before_test.items() for t in times[u][: len(seq)]], dtype=np.float64)
    cut = temporal_cut(stamps, train_share)
    users, histories, targets, all_targets = [], [], [], []
    if keep_next_item:
        users, histories = list(split.valid.users), [list(h) for h in split.valid.histories]
        targets, all_targets = [int(t) for t in split.valid.targets], [[int(t)] for t in split.valid.targets]
    fit_on = split.train if keep_next_item else before_test
    train: dict[str, list[int]] = {}
    for user, seq in before_test.items():
        n_before = int(np.searchsorted(np.asarray(times[user][: len(seq)], dtype=np.float64), cut, side="right"))
        if min(n_before, len(fit_on.get(user, []))):
            train[user] = seq[: min(n_before, len(fit_on[user]))]
        seen = set(seq[:n_before])
        later = list(dict.fromkeys(i for i in seq[n_before:] if i not in seen))
        if n_before and later:
            users.append(user)
            histories.append(seq[:n_before])
            targets.append(later[0])
            all_targets.append(later)
    valid = EvalSet(users, histories, np.asarray(targets, dtype=np.int64), all_targets)
    return LooSplit(train=train, valid=valid, test=split.test)


@dataclass
class EvalTask:
    """Fit on ``train``; rank every item for each of ``users``; their ``targets`` are the relevant items."""

    name: str
    n_items: int
    train: dict[str, list[int]]  # per user, item indices in time order: what the model is fit on
    users: list[str] = field(default_factory=list)
    targets: list[list[int]] = field(default_factory=list)  # one or more distinct items per user

    def histories(self) -> list[list[int]]:
        """Each evaluated user's known history: the model input and the items excluded from ranking."""
        return [self.train.get(u, []) for u in self.users]

    def __len__(self) -> int:
        return len(self.users)


def catalogue(item_ids: Sequence[str]) -> list[str]:
    """The catalogue's item ids in index order (padding first): numeric ids sorted as numbers."""
    unique = {str(i) for i in item_ids}
    if not unique:
        raise ValueError("item_ids is empty: the catalogue needs at least one item")
    key = (lambda s: (0, int(s), s)) if all(s.isdigit() for s in unique) else (lambda s: (1, 0, s))
    return [""] + sorted(unique, key=key)


def interactions_from_events(events: pa.Table, item_ids: Sequence[str]) -> Interactions:
    """Build :class:`Interactions` from an event table (``user_id``, ``item_id``, ``timestamp``).

    ``item_ids`` is the catalogue (e.g. every id of the item file); an event on
    an item outside it is an error, since the protocol ranks the whole catalogue.
    """
    for column in ("user_id", "item_id", "timestamp"):
        if column not in events.column_names:
            raise ValueError(f"events table lacks column {column!r}; it has {events.column_names}")
    ids = catalogue(item_ids)
    index = {item: i for i, item in enumerate(ids) if i}
    raw_items = events.column("item_id").cast(pa.string()).to_pylist()
    unknown = sorted({i for i in raw_items if i not in index})
    if unknown:
        raise ValueError(f"{len(unknown)} event item_id(s) are not in the catalogue, e.g. {unknown[:5]}")
    ts_col = events.column("timestamp")
    if pa.types.is_timestamp(ts_col.type):
        ts_col = pc.cast(ts_col, pa.int64())
    return Interactions(
        users=np.asarray(events.column("user_id").cast(pa.string()).to_pylist(), dtype=object),
        items=np.fromiter((index[i] for i in raw_items), dtype=np.int64, count=len(raw_items)),
        timestamps=np.asarray(ts_col.to_numpy(zero_copy_only=False), dtype=np.int64),
        item_ids=ids,
    )


def time_order(timestamps: np.ndarray) -> np.ndarray:
    """Positions sorted by timestamp, ties by position (an explicit stable sort)."""
    timestamps = np.asarray(timestamps)
    return np.lexsort((np.arange(timestamps.size), timestamps))


def user_sequences(data: Interactions) -> dict[str, list[int]]:
    """Each user's item indices by timestamp, ties by source row; users in first-appearance order."""
    sequences: dict[str, list[int]] = {}
    for row in time_order(data.timestamps):
        sequences.setdefault(str(data.users[row]), []).append(int(data.items[row]))
    # First-appearance order in the file makes the user order independent of time ties.
    first_seen = {u: i for i, u in reversed(list(enumerate(data.users)))}
    return {u: sequences[u] for u in sorted(sequences, key=first_seen.__getitem__)}


def leave_one_out_tasks(data: Interactions) -> tuple[EvalTask, EvalTask]:
    """The leave-last-one-out (valid, test) tasks (see module docstring): :func:`leave_last_one_out` of the
    users' sequences, with the test task refit on each evaluated user's ``h[:-1]``."""
    split = leave_last_one_out(user_sequences(data))
    test_inputs = dict(zip(split.test.users, split.test.histories))
    valid = EvalTask(
        "loo/valid", data.n_items, {u: list(seq) for u, seq in split.train.items()},
        list(split.valid.users), [[int(t)] for t in split.valid.targets],
    )
    test = EvalTask(
        "loo/test", data.n_items, {u: list(test_inputs.get(u, seq)) for u, seq in split.train.items()},
        list(split.test.users), [[int(t)] for t in split.test.targets],
    )
    return valid, test


def temporal_cut(timestamps: np.ndarray, train_share: float = TEMPORAL_TRAIN_SHARE) -> int:
    """The cut timestamp: that of the ``ceil(train_share * N)``-th interaction in time order."""
    timestamps = np.asarray(timestamps)
    if timestamps.size == 0:
        raise ValueError("no interactions to cut")
    if not 0 < train_share <= 1:
        raise ValueError(f"train_share must be in (0, 1], got {train_share}")
    position = math.ceil(round(train_share * timestamps.size, 9))  # round: 0.8 * 10 must be 8, not 8.000001
    return int(np.sort(timestamps, kind="stable")[position - 1])


def temporal_task(data: Interactions, name: str, train_share: float = TEMPORAL_TRAIN_SHARE) -> EvalTask:
    """One global temporal task on ``data``: train up to the cut (ties in train), targets after it."""
    cut = temporal_cut(data.timestamps, train_share)
    in_train = data.timestamps <= cut
    train = user_sequences(data.take(in_train))
    task = EvalTask(name, data.n_items, train)
    after = data.take(~in_train)
    for user, seq in user_sequences(after).items():
        history = train.get(user)
        if not history:
            continue  # no train interaction: a cold-start user, not evaluated
        seen = set(history)
        targets = list(dict.fromkeys(i for i in seq if i not in seen))  # distinct, first-time order
        if targets:
            task.users.append(user)
            task.targets.append(targets)
    return task


def temporal_tasks(data: Interactions, train_share: float = TEMPORAL_TRAIN_SHARE) -> tuple[EvalTask, EvalTask]:
    """The global temporal (valid, test) tasks: valid applies the same cut inside train."""
    test = temporal_task(data, "temporal/test", train_share)
    train_rows = data.timestamps <= temporal_cut(data.timestamps, train_share)
    valid = temporal_task(data.take(train_rows), "temporal/valid", train_share)
    return valid, test


def split_tasks(data: Interactions, split: str) -> tuple[EvalTask, EvalTask]:
    """(valid, test) tasks of ``split``: ``"loo"`` or ``"temporal"``."""
    if split == "loo":
        return leave_one_out_tasks(data)
    if split == "temporal":
        return temporal_tasks(data)
    raise ValueError(f"split must be 'loo' or 'temporal', got {split!r}")


def item_popularity(task: EvalTask) -> np.ndarray:
    """Train interactions per item index, shape (n_items + 1,), float64; index 0 is 0."""
    counts = np.zeros(task.n_items + 1, dtype=np.float64)
    for seq in task.train.values():
        np.add.at(counts, np.asarray(seq, dtype=np.int64), 1.0)
    counts[0] = 0.0
    return counts
