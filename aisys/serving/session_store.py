"""Online per-user item histories (the serving side of the sequence feature).

:class:`SessionStore` is deliberately three methods wide so another backend
(a Ray actor shared by replicas, Redis) can implement it. Histories hold model
item indices (``1..n_items``), oldest first; updates go through
:func:`aisys.features.sequences.append_event`, the same code training uses.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Mapping, Sequence

from aisys.features.sequences import append_event


class SessionStore(ABC):
    """Where serving keeps each user's recent item indices."""

    @abstractmethod
    def get(self, user_id: str) -> list[int]:
        """The user's history, oldest first; ``[]`` for a user never seen."""

    @abstractmethod
    def append(self, user_id: str, item: int, max_len: int) -> list[int]:
        """Append ``item`` to the user's history, keep the last ``max_len``, return the new history."""

    @abstractmethod
    def bulk_load(self, histories: Mapping[str, Sequence[int]]) -> None:
        """Replace the histories of the given users (e.g. from a lake snapshot at start-up)."""


class InMemorySessionStore(SessionStore):
    """A dict in this process: one replica's view, lost on restart. Thread-safe."""

    def __init__(self) -> None:
        self._histories: dict[str, list[int]] = {}
        # FastAPI runs sync routes in a thread pool, so appends can race.
        self._lock = threading.Lock()

    def get(self, user_id: str) -> list[int]:
        with self._lock:
            return list(self._histories.get(user_id, ()))

    def append(self, user_id: str, item: int, max_len: int) -> list[int]:
        with self._lock:
            updated = append_event(self._histories.get(user_id, []), item, max_len)
            self._histories[user_id] = updated
            return list(updated)

    def bulk_load(self, histories: Mapping[str, Sequence[int]]) -> None:
        copied = {str(user): [int(i) for i in items] for user, items in histories.items()}
        with self._lock:
            self._histories.update(copied)

    def __len__(self) -> int:
        with self._lock:
            return len(self._histories)
