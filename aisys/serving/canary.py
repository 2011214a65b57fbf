"""Canary assignment: a stable, sticky share of users goes to the challenger.

A user's bucket is the first 8 bytes of ``sha256(user_id)`` read as a fraction
of 2**64, which is the same on every replica, every restart and every Python
(unlike the built-in ``hash``, salted per process). A user is in the canary
when the fraction is below ``cfg.online.canary_share``, so raising the share
only ever adds users: nobody flips back and forth.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Arm = Literal["champion", "challenger"]
CHAMPION: Arm = "champion"
CHALLENGER: Arm = "challenger"
ARMS: tuple[Arm, ...] = (CHAMPION, CHALLENGER)


def user_bucket(user_id: str) -> float:
    """The user's stable position in ``[0, 1)``."""
    digest = hashlib.sha256(user_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def arm_for_user(user_id: str, canary_share: float) -> Arm:
    """``"challenger"`` for the canary share of users (sticky), ``"champion"`` for the rest."""
    if not 0.0 <= canary_share <= 1.0:
        raise ValueError(f"canary_share must be within 0..1, got {canary_share}")
    return CHALLENGER if user_bucket(user_id) < canary_share else CHAMPION
