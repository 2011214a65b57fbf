"""The one SASRec fit (aisys.training.fit): resume equals an uninterrupted run, and the best epoch is kept (no Ray)."""

from __future__ import annotations

import numpy as np
import torch

from aisys.models.sasrec import SASRecConfig
from aisys.training.fit import RESUMED_FROM, FitSettings, FitState, fit_sasrec
from aisys.training.loop import training_examples

torch.set_num_threads(1)

MODEL = SASRecConfig(n_items=12, max_seq_len=6, embedding_dim=8, n_layers=1, n_heads=2, dropout=0.3)


def examples() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    histories = {f"u{u}": [int((s + t) % 12) + 1 for t in range(9)] for u, s in enumerate(rng.integers(0, 12, 24))}
    return training_examples(histories, MODEL.max_seq_len)


def test_a_fit_resumed_from_a_checkpoint_ends_with_the_uninterrupted_fits_weights():
    inputs, targets = examples()
    settings = FitSettings(epochs=4, batch_size=8, lr=0.01, seed=3, eval_every=2)
    scores = iter(np.linspace(0.1, 0.9, 10))  # a validation that improves every time it runs

    def validate(model):
        return {"valid_ndcg@10": float(next(scores))}

    saved: dict[int, FitState] = {}
    whole = fit_sasrec(MODEL, settings, inputs, targets, validate=validate,
                       on_epoch=lambda end: saved.__setitem__(end.epoch, end.checkpoint()))
    scores = iter(np.linspace(0.1, 0.9, 10)[1:])  # the resumed run validates once more (epoch 3)
    resumed = fit_sasrec(MODEL, settings, inputs, targets, validate=validate, resume=saved[1])

    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name  # dropout masks re-drawn alike
    assert [row["epoch"] for row in resumed.history] == [0, 1, 2, 3]
    assert [row[RESUMED_FROM] for row in resumed.history] == [-1, -1, 1, 1]
    assert whole.state.best_epoch == resumed.state.best_epoch == 3  # validated at epochs 1 and 3


def test_the_best_validated_weights_are_kept_not_the_last():
    inputs, targets = examples()
    settings = FitSettings(epochs=3, batch_size=8, lr=0.05, seed=1, eval_every=1)
    marks = iter([0.5, 0.9, 0.2])
    seen = []

    def validate(model):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"valid_ndcg@10": next(marks)}

    result = fit_sasrec(MODEL, settings, inputs, targets, validate=validate)
    assert result.state.best_epoch == 1
    assert all(torch.equal(result.state.best_state[k], seen[1][k]) for k in seen[1])
    assert not all(torch.equal(result.model.state_dict()[k], seen[1][k]) for k in seen[1])
