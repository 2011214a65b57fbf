import math

import pytest
import torch

from aisys.config import AppConfig
from aisys.models.bundle import ModelBundle
from aisys.models.sasrec import SASRec, SASRecConfig, build_model, strip_ddp_prefix

torch.set_num_threads(1)


def small_model(seed: int = 0) -> SASRec:
    torch.manual_seed(seed)
    return SASRec(SASRecConfig(n_items=30, max_seq_len=8, embedding_dim=16, n_layers=2, n_heads=2, dropout=0.0))


def test_shapes_and_padding_score_is_minus_inf():
    model = small_model().eval()
    seqs = torch.tensor([[0, 0, 0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0, 0, 0, 9]])
    hidden = model(seqs)
    assert hidden.shape == (2, 8, 16)
    assert not torch.isnan(hidden).any()
    assert torch.all(hidden[1, :7] == 0)  # padded positions carry nothing
    scores = model.score_next(seqs)
    assert scores.shape == (2, 31)
    assert torch.all(scores[:, 0] == -math.inf)
    assert torch.isfinite(scores[:, 1:]).all()


def test_causal_later_items_do_not_change_earlier_positions():
    model = small_model().eval()
    seqs = torch.tensor([[0, 0, 3, 7, 1, 12, 5, 8]])
    changed = seqs.clone()
    changed[0, 5] = 20
    with torch.no_grad():
        a, b = model(seqs), model(changed)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_padding_does_not_leak_into_real_positions():
    model = small_model().eval()
    # Same real items, different amounts of left padding -> same last hidden state.
    short = torch.tensor([[0, 0, 0, 0, 0, 4, 6, 9]])
    with torch.no_grad():
        full = model(short)[:, -1]
        trimmed = model(short[:, -3:])[:, -1]
    assert torch.allclose(full, trimmed, atol=1e-5)


def test_from_app_and_rebuild_from_bundle_with_ddp_prefix():
    cfg = AppConfig()
    mc = SASRecConfig.from_app(cfg, n_items=30)
    assert (mc.max_seq_len, mc.embedding_dim, mc.n_layers) == (cfg.features.max_seq_len, 64, 2)
    model = small_model(seed=3).eval()
    ddp_state = {f"module.{k}": v for k, v in model.state_dict().items()}
    bundle = ModelBundle(
        model_kind="sasrec",
        model_config=model.config.to_dict(),
        item_ids=[""] + [f"i{n}" for n in range(30)],
        item_popularity=[0.0] * 31,
        state_dict=ddp_state,
    )
    rebuilt = build_model(bundle)
    assert not rebuilt.training
    seqs = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(rebuilt.score_next(seqs), model.score_next(seqs))
    assert set(strip_ddp_prefix(ddp_state)) == set(model.state_dict())


def test_config_rejects_bad_heads():
    with pytest.raises(ValueError, match="n_heads"):
        SASRecConfig(n_items=5, max_seq_len=4, embedding_dim=10, n_heads=3)
