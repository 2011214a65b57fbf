"""SASRec behind the evaluation interface, and length-bucketed batches (no Ray)."""

from __future__ import annotations

import numpy as np
import torch

from aisys.evaluation.sequential import SASRecRecommender, SequentialSettings
from aisys.models.sasrec import SASRec, SASRecConfig
from aisys.training.loop import iterate_batches, next_item_loss, training_examples, trim_left_padding

torch.set_num_threads(1)


def histories(n_users: int = 30, seed: int = 0) -> dict[str, list[int]]:
    """Users walk items 1..12 in a cycle (next = current + 1) from random starts, random lengths."""
    rng = np.random.default_rng(seed)
    return {
        f"u{u}": [int((start + t) % 12) + 1 for t in range(int(rng.integers(3, 15)))]
        for u, start in enumerate(rng.integers(0, 12, n_users))
    }


def test_trim_left_padding_drops_only_all_padding_columns():
    x = np.array([[0, 0, 3, 4], [0, 5, 6, 7]])
    y = np.array([[0, 0, 4, 8], [0, 6, 7, 9]])
    tx, ty = trim_left_padding(x, y)
    assert tx.tolist() == [[0, 3, 4], [5, 6, 7]] and ty.tolist() == [[0, 4, 8], [6, 7, 9]]


def test_bucketed_batches_hold_the_same_examples_and_give_the_same_loss():
    inputs, targets = training_examples(histories(), max_seq_len=16)
    plain = list(iterate_batches(inputs, targets, 4, seed=1, bucket_by_length=False))
    bucketed = list(iterate_batches(inputs, targets, 4, seed=1, bucket_by_length=True))

    def pairs(batches):
        return sorted(
            (tuple(x[x > 0].tolist()), tuple(y[x > 0].tolist())) for bx, by in batches for x, y in zip(bx, by)
        )

    assert pairs(plain) == pairs(bucketed)
    widths = [b[0].shape[1] for b in bucketed]
    assert max(widths) == (inputs != 0).sum(axis=1).max() < 16 and min(widths) < max(widths)
    assert {b[0].shape[1] for b in plain} == {16}  # unbucketed batches keep the full width
    assert all(bool((bx[:, 0] != 0).any()) for bx, _ in bucketed)  # no all-padding leading column
    # Right-aligned positions make trimming exact: the same batch gives the same loss, trimmed or not.
    model = SASRec(SASRecConfig(n_items=12, max_seq_len=16, embedding_dim=8, n_layers=1, n_heads=2, dropout=0.0))
    x, y = torch.from_numpy(inputs[:5]), torch.from_numpy(targets[:5])
    tx, ty = (torch.from_numpy(a) for a in trim_left_padding(inputs[:5], targets[:5]))
    assert torch.allclose(next_item_loss(model, x, y), next_item_loss(model, tx, ty), atol=1e-6)


def test_recommender_learns_the_cycle_and_keeps_the_best_validated_epoch():
    train = histories()
    settings = SequentialSettings(max_seq_len=8, embedding_dim=16, n_layers=1, n_heads=2, dropout=0.0, epochs=8,
                                  batch_size=8, lr=0.02, eval_every=3)
    users, hists = list(train), list(train.values())
    expected = np.array([h[-1] % 12 + 1 for h in hists])
    seen = []

    def validate(model: SASRecRecommender) -> float:
        accuracy = float((model.score(users, hists).argmax(axis=1) == expected).mean())
        seen.append(accuracy)
        return accuracy

    model = SASRecRecommender(settings).fit(train, n_items=12, validate=validate)
    assert sorted(model.trace.scores) == [3, 6, 8]
    assert model.trace.best_epoch == max(model.trace.scores, key=model.trace.scores.get)
    scores = model.score(users, hists)
    assert scores.shape == (len(users), 13) and np.isneginf(scores[:, 0]).all()
    assert float((scores.argmax(axis=1) == expected).mean()) == max(seen) >= 0.9  # best weights restored


def test_horizon_loss_adds_the_cross_entropy_of_the_items_further_ahead():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=9, max_seq_len=4, embedding_dim=8, n_layers=1, n_heads=2, dropout=0.0))
    inputs = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    targets = torch.tensor([[0, 2, 3, 9], [5, 6, 7, 8]])
    plain = next_item_loss(model, inputs, targets)
    assert torch.allclose(next_item_loss(model, inputs, targets, horizon=3, horizon_weight=0.0), plain)

    log_probs = torch.log_softmax(model(inputs) @ model.item_emb.weight.T, dim=-1)  # (B, T, V)
    # Real positions: (0,1), (0,2), (0,3), (1,0..3). Items 2 and 3 steps ahead of each, where the window has them.
    ahead = [
        (0, 1, 3), (0, 1, 9), (0, 2, 9),
        (1, 0, 6), (1, 0, 7), (1, 1, 7), (1, 1, 8), (1, 2, 8),
    ]
    expected_ahead = -torch.stack([log_probs[b, t, item] for b, t, item in ahead]).mean()
    got = next_item_loss(model, inputs, targets, horizon=3, horizon_weight=0.5)
    assert torch.allclose(got, plain + 0.5 * expected_ahead, atol=1e-5)
