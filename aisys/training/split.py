"""Leave-last-one-out split of user histories (the standard SASRec protocol).

For a user with history ``h`` of at least 3 interactions:
- test:  input ``h[:-1]``, target ``h[-1]``
- valid: input ``h[:-2]``, target ``h[-2]``
- train: ``h[:-2]`` (the model never trains on the valid or test target)

Users with fewer than 3 interactions go wholly to train and are in neither
valid nor test: holding out one of two items would leave too little to
predict from, and the protocol would be noisier, not fairer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_EVAL_INTERACTIONS = 3


@dataclass
class EvalSet:
    """Users to evaluate: each one's input history and the held-out next item."""

    users: list[str] = field(default_factory=list)
    histories: list[list[int]] = field(default_factory=list)
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class LooSplit:
    """Train sequences per user, plus the valid and test evaluation sets."""

    train: dict[str, list[int]]
    valid: EvalSet
    test: EvalSet


def leave_last_one_out(histories: dict[str, list[int]]) -> LooSplit:
    """Split each user's history: last item = test, second-last = valid, rest = train.

    Users with fewer than 3 interactions are all train (see module docstring).
    Users appear in valid/test in the order of ``histories``.
    """
    train: dict[str, list[int]] = {}
    valid_users, valid_hist, valid_tgt = [], [], []
    test_users, test_hist, test_tgt = [], [], []
    for user, history in histories.items():
        history = list(history)
        if len(history) < MIN_EVAL_INTERACTIONS:
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
