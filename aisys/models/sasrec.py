"""SASRec: a causal transformer over a user's last N items (Kang & McAuley, 2018).

Input is a window of item indices, oldest first, left-padded with 0 (see
``aisys.features.sequences.recent_window``). Each position attends only to
itself and earlier, non-padding positions, so the hidden state at position t
summarises items ``<= t``. Scores are the dot product of a hidden state with
the item embeddings (tied input/output embeddings).

Training uses a full softmax over all items at every position with the next
item as target (see ``aisys.training.loop``).

The config dataclass sits beside the model and is stored in the bundle, so a
model can always be rebuilt from a bundle alone (:func:`build_model`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from aisys.config import AppConfig
    from aisys.models.bundle import ModelBundle

MODEL_KIND = "sasrec"
_DDP_PREFIX = "module."


@dataclass
class SASRecConfig:
    """Everything needed to rebuild a :class:`SASRec` (stored in the bundle)."""

    n_items: int
    max_seq_len: int
    embedding_dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.n_items < 1:
            raise ValueError(f"SASRecConfig.n_items must be >= 1, got {self.n_items}")
        if self.max_seq_len < 1:
            raise ValueError(f"SASRecConfig.max_seq_len must be >= 1, got {self.max_seq_len}")
        if self.embedding_dim % self.n_heads:
            raise ValueError(
                f"SASRecConfig.embedding_dim ({self.embedding_dim}) must be divisible by n_heads ({self.n_heads})"
            )

    @classmethod
    def from_app(cls, cfg: "AppConfig", n_items: int) -> "SASRecConfig":
        """The model config for a catalogue of ``n_items`` real items under ``cfg``."""
        return cls(
            n_items=n_items,
            max_seq_len=cfg.features.max_seq_len,
            embedding_dim=cfg.model.embedding_dim,
            n_layers=cfg.model.n_layers,
            n_heads=cfg.model.n_heads,
            dropout=cfg.model.dropout,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)  # each (B, T, D)
        # (B, H, T, D/H)
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, D/H)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.proj(y)


class _Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + ffn(ln(x))."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _CausalSelfAttention(dim, n_heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), allowed))
        x = x + self.drop(self.ffn(self.ln2(x)))
        return x


class SASRec(nn.Module):
    """Causal self-attention over the recent item window; tied item embeddings for output."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        D = config.embedding_dim
        self.item_emb = nn.Embedding(config.n_items + 1, D, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_seq_len, D)
        self.emb_drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            [_Block(D, config.n_heads, config.dropout) for _ in range(config.n_layers)]
        )
        self.ln_f = nn.LayerNorm(D)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """Hidden states: ``(B, T)`` item indices -> ``(B, T, D)``; padded positions are 0."""
        B, T = seqs.shape
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds model max_seq_len {self.config.max_seq_len}")
        pad = seqs == 0  # (B, T)
        # Windows are right-aligned (left-padded), so the newest item always gets
        # the last position embedding, whatever T is.
        positions = torch.arange(self.config.max_seq_len - T, self.config.max_seq_len, device=seqs.device)
        x = self.item_emb(seqs) * math.sqrt(self.config.embedding_dim) + self.pos_emb(positions)  # (B, T, D)
        x = self.emb_drop(x) * (~pad).unsqueeze(-1)

        causal = torch.ones(T, T, dtype=torch.bool, device=seqs.device).tril()  # (T, T)
        # A query may see earlier non-padding keys, and always itself: a padded
        # query would otherwise see no key at all and produce NaN.
        eye = torch.eye(T, dtype=torch.bool, device=seqs.device)
        allowed = (causal & ~pad[:, None, :]) | eye  # (B, T, T)
        allowed = allowed[:, None, :, :]  # (B, 1, T, T), broadcast over heads

        for block in self.blocks:
            x = block(x, allowed) * (~pad).unsqueeze(-1)
        return self.ln_f(x) * (~pad).unsqueeze(-1)  # (B, T, D)

    def logits(self, seqs: torch.Tensor) -> torch.Tensor:
        """Scores for the next item at every position: ``(B, T)`` -> ``(B, T, n_items + 1)``."""
        hidden = self.forward(seqs)  # (B, T, D)
        return hidden @ self.item_emb.weight.T  # (B, T, V)

    def score_next(self, seqs: torch.Tensor) -> torch.Tensor:
        """Scores of the item after each window: ``(B, T)`` -> ``(B, n_items + 1)``; ``[:, 0] = -inf``."""
        hidden = self.forward(seqs)[:, -1, :]  # (B, D): the newest position
        scores = hidden @ self.item_emb.weight.T  # (B, V)
        scores[:, 0] = float("-inf")
        return scores


def strip_ddp_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop DDP's ``module.`` prefix so a state dict loads into a bare :class:`SASRec`."""
    return {
        (key[len(_DDP_PREFIX) :] if key.startswith(_DDP_PREFIX) else key): value
        for key, value in state_dict.items()
    }


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a model's weights, unwrapped from DDP if needed."""
    inner = model.module if hasattr(model, "module") else model
    return {k: v.detach().cpu().clone() for k, v in strip_ddp_prefix(inner.state_dict()).items()}


def build_model(bundle: "ModelBundle") -> SASRec:
    """Rebuild a SASRec from ``bundle.model_config`` + ``bundle.state_dict``, in eval mode on CPU."""
    if bundle.model_kind != MODEL_KIND:
        raise ValueError(f"bundle.model_kind is {bundle.model_kind!r}; build_model builds {MODEL_KIND!r}")
    if bundle.state_dict is None:
        raise ValueError("bundle.state_dict is None: the bundle carries no weights to build a SASRec from")
    model = SASRec(SASRecConfig(**bundle.model_config))
    model.load_state_dict(strip_ddp_prefix(bundle.state_dict))
    return model.eval()
