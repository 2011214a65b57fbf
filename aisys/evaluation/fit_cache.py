"""SASRec fits kept on disk by everything that determines them, so a benchmark re-run skips training."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Sequence

from aisys.evaluation.sequential import FitTrace, SASRecRecommender, SequentialSettings


class CachedSASRec(SASRecRecommender):
    """A :class:`SASRecRecommender` whose fits are stored in ``cache_dir`` and reloaded when asked again.

    The key is every setting (seed and epochs included), the catalogue size, the
    train sequences, and whether (and on which ``task``) it validated: the same
    key trains the same model, so a benchmark re-run (e.g. with a new blend) skips
    SASRec training. ``trace.seconds`` keeps the original fit's time.
    """

    def __init__(self, settings: SequentialSettings, cache_dir: str | Path, task: str = "") -> None:
        super().__init__(settings)
        self.cache_dir, self.task = Path(cache_dir), task
        self.from_cache = False

    def _path(self, train: Mapping[str, Sequence[int]], n_items: int, validated: bool) -> Path:
        key = json.dumps(
            {"settings": asdict(self.settings), "n_items": n_items, "validated": validated, "task": self.task,
             "train": sorted((u, list(map(int, seq))) for u, seq in train.items())},
            sort_keys=True,
        )
        return self.cache_dir / f"sasrec-{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"

    def fit(self, train, n_items, validate=None):  # noqa: D102 (see SASRecRecommender.fit)
        import torch

        from aisys.models.sasrec import SASRec, SASRecConfig

        path = self._path(train, n_items, validate is not None)
        if path.exists():
            stored = torch.load(path, weights_only=True)
            s = self.settings
            self.model = SASRec(SASRecConfig(
                n_items=n_items, max_seq_len=s.max_seq_len, embedding_dim=s.embedding_dim, n_layers=s.n_layers,
                n_heads=s.n_heads, dropout=s.dropout,
            ))
            self.model.load_state_dict(stored["state_dict"])
            self.model.eval()
            self.trace = FitTrace(**stored["trace"])
            self.from_cache = True
            return self
        super().fit(train, n_items, validate)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"state_dict": self.model.state_dict(), "trace": asdict(self.trace)}, tmp)
        tmp.replace(path)  # atomic: a parallel run never reads half a file
        return self

