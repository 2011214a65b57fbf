"""Canary assignment: stable across processes, sticky, and close to the configured share."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aisys.serving.canary import arm_for_user, user_bucket

USERS = [f"user-{n}" for n in range(4000)]


def test_assignment_is_stable_across_processes():
    # Python's built-in hash is salted per process; the canary must not be.
    code = "from aisys.serving.canary import arm_for_user as a; print(''.join(a(f'user-{n}', 0.3)[1] for n in range(200)))"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed}).stdout.strip() for seed in ("1", "2")}
    assert runs == {"".join(arm_for_user(f"user-{n}", 0.3)[1] for n in range(200))}


@pytest.mark.parametrize("share", [0.05, 0.2, 0.5])
def test_share_of_users_in_the_canary(share):
    in_canary = sum(arm_for_user(u, share) == "challenger" for u in USERS) / len(USERS)
    assert abs(in_canary - share) < 0.03


def test_edges_and_monotonic_growth():
    assert {arm_for_user(u, 0.0) for u in USERS[:500]} == {"champion"}
    assert {arm_for_user(u, 1.0) for u in USERS[:500]} == {"challenger"}
    small = {u for u in USERS if arm_for_user(u, 0.1) == "challenger"}
    large = {u for u in USERS if arm_for_user(u, 0.3) == "challenger"}
    assert small < large  # raising the share only adds users
    assert all(0.0 <= user_bucket(u) < 1.0 for u in USERS[:100])
    with pytest.raises(ValueError, match="canary_share"):
        arm_for_user("u", 1.5)
