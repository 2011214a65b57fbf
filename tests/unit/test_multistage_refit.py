"""The shipped SASRec of the multi-stage model is refit on train + valid after every choice on valid
(``model.stages.refit_sasrec``): the choices are those of the fit on train, the bundle's weights the refit's.

Ray is replaced by a synchronous stand-in (``ray.remote/put/get``), so this stays a pure test.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import numpy as np
import pytest

from aisys.config import load_config
from aisys.quality.protocol import leave_last_one_out
from aisys.training.multistage import train_multistage

N_ITEMS = 12
HOUR = 3_600.0


class _Remote:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return self.fn(*args)


@pytest.fixture
def sync_ray(monkeypatch):
    fake = types.SimpleNamespace(
        remote=lambda **_: (lambda fn: _Remote(fn)), put=lambda value: value, get=lambda value: value,
    )
    monkeypatch.setitem(sys.modules, "ray", fake)
    return fake


@dataclass
class _Result:
    state_dict: dict
    history: list = field(default_factory=list)
    best_epoch: int = 3


class _Scorer:
    """A SASRec stand-in: scores item ``(last + shift) % N_ITEMS + 1`` highest."""

    def __init__(self, shift: int):
        self.shift = shift

    def score_sessions(self, histories, gaps_s=None, now_s=None):
        scores = np.zeros((len(histories), N_ITEMS + 1))
        for row, history in enumerate(histories):
            scores[row, (history[-1] + self.shift) % N_ITEMS + 1] = 1.0
        return scores


def _data(n_users: int = 40):
    rng = np.random.default_rng(0)
    histories, times = {}, {}
    for u in range(n_users):
        start = int(rng.integers(1, N_ITEMS + 1))
        histories[f"u{u}"] = [(start + k - 1) % N_ITEMS + 1 for k in range(6)]  # each next item is last + 1
        times[f"u{u}"] = [1_000.0 + k * HOUR for k in range(6)]
    return histories, times


@pytest.mark.parametrize("refit", [True, False])
def test_the_shipped_sasrec_is_refit_on_train_and_valid_after_the_choices(sync_ray, refit):
    cfg = load_config(None, ["model.stages.ranking=blend", "model.stages.title=false",
                             f"model.stages.refit_sasrec={str(refit).lower()}"])
    histories, times = _data()
    split = leave_last_one_out(histories)
    first, refits = _Result({"w": "train"}), []

    def refit_sasrec(result, train_and_valid):
        refits.append((result, train_and_valid))
        return _Result({"w": "train+valid"}, best_epoch=-1)

    def scorer_of(result):
        return _Scorer(0 if result.state_dict["w"] == "train" else 1)

    result, fit = train_multistage(cfg, histories, times, split, N_ITEMS, None, lambda: first, scorer_of,
                                   refit_sasrec=refit_sasrec)

    assert fit.blend.valid_ndcg == pytest.approx(1.0)  # chosen with the fit on train (it ranks every valid target)
    assert result.history is first.history and result.best_epoch == first.best_epoch
    if not refit:
        assert refits == [] and result.state_dict == {"w": "train"}
        assert fit.scorer.sasrec.shift == 0
        return
    (given, train_and_valid), = refits
    assert given is first
    assert train_and_valid == {u: h[:-1] for u, h in histories.items()}  # the valid item is history; never the test
    assert result.state_dict == {"w": "train+valid"}
    assert fit.scorer is fit.blend_scorer and fit.scorer.sasrec.shift == 1
    assert "sasrec_refit" in fit.seconds


def test_a_time_cut_validation_still_refits_on_every_event_but_the_test_items(sync_ray):
    from aisys.quality.protocol import time_cut_validation

    cfg = load_config(None, ["model.stages.ranking=blend", "model.stages.title=false"])
    histories, times = _data()
    times = {u: [t + 600.0 * int(u[1:]) for t in stamps] for u, stamps in times.items()}  # users staggered in time
    split = time_cut_validation(leave_last_one_out(histories), times)
    assert 0 < len(split.valid) < len(histories)  # some users straddle the cut, not all
    refits = []

    def refit_sasrec(result, train_and_valid):
        refits.append(train_and_valid)
        return _Result({"w": "train+valid"}, best_epoch=-1)

    _, fit = train_multistage(cfg, histories, times, split, N_ITEMS, None, lambda: _Result({"w": "train"}),
                              lambda result: _Scorer(0), refit_sasrec=refit_sasrec)

    # The first item after the cut is last + 1, ranked first; a returning user's later items count too (below 1).
    assert 0.9 < fit.blend.valid_ndcg < 1.0
    assert refits == [{u: h[:-1] for u, h in histories.items()}]  # not only the events before the cut
