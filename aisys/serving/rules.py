"""Business rules on top of the model's scores: what may be recommended, and why an item was.

Pure (numpy, stdlib): no Ray, no FastAPI, no torch.

- **Exclusion** (``cfg.online.exclude``): ``"purchased"`` never recommends an item
  the user bought; ``"seen"`` never recommends anything in their kept history.
- **Stock**: an :class:`Inventory` says which items are out of stock; they are
  never recommended. :class:`JsonFileInventory` keeps the list in a JSON file
  that every replica on the host reads (``PUT /admin/stock`` writes it).
- **Reasons**: a model pick says ``"because you viewed <item>"``, naming the
  history item whose embedding is most similar to it (cosine), or, without
  embeddings, the newest history item of the same category (else the newest
  one). A popularity pick says ``"popular now"``.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np

from aisys.serving.session_store import UserSession

ExcludePolicy = Literal["purchased", "seen"]
POPULAR_REASON = "popular now"
VIEWED_REASON = "because you viewed {item}"
RECENT_REASON = "you looked at this recently"


def excluded_items(session: UserSession, policy: ExcludePolicy) -> frozenset[str]:
    """Item ids never to recommend to this user under ``policy`` (``cfg.online.exclude``)."""
    if policy == "purchased":
        return session.purchased
    if policy == "seen":
        return frozenset(session.items) | session.purchased
    raise ValueError(f"online.exclude must be 'purchased' or 'seen', got {policy!r}")


def mask_items(scores: np.ndarray, item_ids: Iterable[str], item_index: Mapping[str, int]) -> np.ndarray:
    """Set the scores of ``item_ids`` to ``-inf`` in place (ids the vocabulary lacks are ignored); return scores."""
    rows = [item_index[item] for item in item_ids if item in item_index]
    if rows:
        scores[np.asarray(rows, dtype=np.int64)] = -np.inf
    return scores


def normalised_rows(embeddings: np.ndarray) -> np.ndarray:
    """Row-wise unit vectors (zero rows stay zero), for cosine similarity by dot product."""
    emb = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.where(norms > 0, norms, 1.0)


def explain(
    picks: Sequence[int],
    history: Sequence[int],
    item_ids: Sequence[str],
    *,
    unit_embeddings: np.ndarray | None = None,
    categories: Sequence[str | None] | None = None,
) -> list[str]:
    """One reason per picked item index: ``"because you viewed <item>"`` for a history item it resembles.

    A pick that is itself in the history (viewed, not purchased) gets
    :data:`RECENT_REASON` instead of explaining itself.

    ``history`` holds item indices, oldest first. With ``unit_embeddings``
    (``(n_items + 1, D)``, rows of norm 1, see :func:`normalised_rows`) the
    most similar history item is named (ties: the newer one). Without them,
    the newest history item of the pick's category, else the newest item.
    An empty history gives :data:`POPULAR_REASON` for every pick.
    """
    if not len(history):
        return [POPULAR_REASON] * len(picks)
    hist = np.asarray(history, dtype=np.int64)
    seen = set(hist.tolist())
    if unit_embeddings is not None and len(picks):
        picks_arr = np.asarray(picks, dtype=np.int64)
        sims = unit_embeddings[picks_arr] @ unit_embeddings[hist].T  # (P, H)
        # An item does not explain itself: compare each pick with the *other* history items.
        sims = np.where(hist[None, :] == picks_arr[:, None], -np.inf, sims)
        # argmax over the reversed history picks the newest among equals.
        best = hist[len(hist) - 1 - np.argmax(sims[:, ::-1], axis=1)]
        return [_reason(int(p), int(b), seen, item_ids) for p, b in zip(picks_arr, best)]
    reasons = []
    for pick in picks:
        others = [int(h) for h in hist[::-1] if int(h) != int(pick)]
        chosen = others[0] if others else int(pick)
        if categories is not None and categories[pick] is not None:
            same = [h for h in others if categories[h] == categories[pick]]
            chosen = same[0] if same else chosen
        reasons.append(_reason(int(pick), chosen, seen, item_ids))
    return reasons


def _reason(pick: int, explained_by: int, seen: set[int], item_ids: Sequence[str]) -> str:
    """A pick the user already interacted with is a reminder; others name the item they resemble."""
    if pick in seen:
        return RECENT_REASON
    return VIEWED_REASON.format(item=item_ids[explained_by])


class Inventory(ABC):
    """Which items can be sold now. Items never mentioned are in stock."""

    @abstractmethod
    def out_of_stock(self) -> frozenset[str]:
        """Ids of the items currently out of stock."""

    @abstractmethod
    def set_stock(self, updates: Mapping[str, bool]) -> frozenset[str]:
        """Apply ``{item_id: in_stock}`` updates; return the new out-of-stock set."""

    def in_stock(self, item_ids: Sequence[str]) -> list[bool]:
        """For each item id, whether it is in stock."""
        gone = self.out_of_stock()
        return [item not in gone for item in item_ids]


class InMemoryInventory(Inventory):
    """The out-of-stock set in this process (tests, one replica). Thread-safe."""

    def __init__(self, out_of_stock: Iterable[str] = ()) -> None:
        self._gone = frozenset(out_of_stock)
        self._lock = threading.Lock()

    def out_of_stock(self) -> frozenset[str]:
        return self._gone

    def set_stock(self, updates: Mapping[str, bool]) -> frozenset[str]:
        with self._lock:
            self._gone = _updated(self._gone, updates)
            return self._gone


class JsonFileInventory(Inventory):
    """Out-of-stock items in a JSON file (``{"out_of_stock": [...]}``) shared by processes on a host.

    Reads re-load the file only when its modification time or size changed (a
    ``stat`` per call). Writes hold an ``flock`` on a side lock file, re-read,
    update and replace the file atomically, so two replicas updating at once
    lose nothing. A missing file means everything is in stock.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._path_text = str(self.path)  # os.stat on a str: a per-request call, without pathlib's overhead
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._gone: frozenset[str] = frozenset()

    def out_of_stock(self) -> frozenset[str]:
        try:
            stat = os.stat(self._path_text)
        except FileNotFoundError:
            return frozenset()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            with self._lock:
                self._gone = self._read()
                self._stamp = stamp
        return self._gone

    def _read(self) -> frozenset[str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return frozenset()
        except json.JSONDecodeError as err:
            raise ValueError(f"stock file {self.path} is not valid JSON: {err}") from None
        items = data.get("out_of_stock") if isinstance(data, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError(f'stock file {self.path} must hold {{"out_of_stock": [item ids]}}')
        return frozenset(items)

    def set_stock(self, updates: Mapping[str, bool]) -> frozenset[str]:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path.with_suffix(self.path.suffix + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            gone = _updated(self._read(), updates)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".stock-")
            with os.fdopen(fd, "w") as handle:
                json.dump({"out_of_stock": sorted(gone)}, handle)
            os.replace(tmp, self.path)
            self._gone, self._stamp = gone, None  # re-stat on the next read
        return gone


def _updated(gone: frozenset[str], updates: Mapping[str, bool]) -> frozenset[str]:
    back = {item for item, available in updates.items() if available}
    out = {item for item, available in updates.items() if not available}
    return frozenset((gone - back) | out)
