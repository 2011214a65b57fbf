"""Online quality: the hit-rate of served recommendation lists (pure, bounded memory).

A served list is a *hit* when the user interacts with one of its items within
their next ``horizon_events`` events, and a *miss* when those events pass without
one. Any event type counts as an interaction. Lists are judged per model version
and canary arm, so a challenger is compared with the champion on live traffic.

Per (model version, arm) the tracker keeps cumulative counts, the hit-rate over
the most recent ``window_lists`` judged lists (what the retrain policy watches),
and a *baseline*: the hit-rate over the version's first ``baseline_lists`` judged
lists, frozen once reached, so a drop is measured against the model's own start.

Memory is bounded: at most ``max_users`` users with open lists (least recently
active dropped first) and ``max_pending_per_user`` open lists each; lists dropped
that way are counted as ``expired``, never as misses.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from typing import Iterable


@dataclass(frozen=True)
class HitRate:
    """Online hit-rate of one model version on one arm."""

    model_version: str
    arm: str
    judged: int
    hits: int
    hit_rate: float | None  # cumulative
    recent_judged: int
    recent_hit_rate: float | None  # over the last ``window_lists`` judged lists
    baseline_hit_rate: float | None  # over the first ``baseline_lists`` judged lists, once there are that many
    expired: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _ArmStats:
    window_lists: int
    hits: int = 0
    judged: int = 0
    expired: int = 0
    baseline_hits: int = 0
    baseline: float | None = None
    recent: deque = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.window_lists)

    def judge(self, hit: bool, baseline_lists: int) -> None:
        self.judged += 1
        self.hits += int(hit)
        self.recent.append(hit)
        if self.baseline is None:
            self.baseline_hits += int(hit)
            if self.judged >= baseline_lists:
                self.baseline = self.baseline_hits / self.judged


@dataclass
class _OpenList:
    items: frozenset
    key: tuple[str, str]
    remaining: int


class HitRateTracker:
    """Judges served lists against each user's next events; see the module docstring."""

    def __init__(
        self,
        horizon_events: int,
        baseline_lists: int = 200,
        window_lists: int = 1000,
        max_users: int = 100_000,
        max_pending_per_user: int = 50,
    ):
        for name, value in (("horizon_events", horizon_events), ("baseline_lists", baseline_lists),
                            ("window_lists", window_lists), ("max_users", max_users),
                            ("max_pending_per_user", max_pending_per_user)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.horizon_events = horizon_events
        self.baseline_lists = baseline_lists
        self.window_lists = window_lists
        self.max_users = max_users
        self.max_pending_per_user = max_pending_per_user
        self._open: OrderedDict[str, deque[_OpenList]] = OrderedDict()
        self._stats: dict[tuple[str, str], _ArmStats] = {}

    def _arm(self, key: tuple[str, str]) -> _ArmStats:
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = _ArmStats(self.window_lists)
        return stats

    def record_list(self, user_id: str, items: Iterable[str], model_version: str, arm: str = "champion") -> None:
        """A list was served to ``user_id``; it will be judged by their next events. Empty lists are ignored."""
        item_set = frozenset(str(i) for i in items)
        if not item_set:
            return
        key = (str(model_version), str(arm))
        self._arm(key)
        user = str(user_id)
        lists = self._open.get(user)
        if lists is None:
            lists = self._open[user] = deque()
        self._open.move_to_end(user)
        lists.append(_OpenList(item_set, key, self.horizon_events))
        if len(lists) > self.max_pending_per_user:
            self._arm(lists.popleft().key).expired += 1
        while len(self._open) > self.max_users:
            _, dropped = self._open.popitem(last=False)
            for open_list in dropped:
                self._arm(open_list.key).expired += 1

    def record_event(self, user_id: str, item_id: str) -> list[tuple[str, str, bool]]:
        """``user_id`` interacted with ``item_id``: judge their open lists.

        Returns ``(model_version, arm, hit)`` for every list judged by this event.
        """
        user = str(user_id)
        lists = self._open.get(user)
        if not lists:
            return []
        item = str(item_id)
        judged: list[tuple[str, str, bool]] = []
        still_open: deque[_OpenList] = deque()
        for open_list in lists:
            hit = item in open_list.items
            open_list.remaining -= 1
            if hit or open_list.remaining <= 0:
                self._arm(open_list.key).judge(hit, self.baseline_lists)
                judged.append((*open_list.key, hit))
            else:
                still_open.append(open_list)
        if still_open:
            self._open[user] = still_open
            self._open.move_to_end(user)
        else:
            del self._open[user]
        return judged

    def set_baseline(self, model_version: str, arm: str, hit_rate: float) -> None:
        """Fix a version's baseline by hand (e.g. carried over from an earlier deployment)."""
        if not 0.0 <= hit_rate <= 1.0:
            raise ValueError(f"hit_rate must be in [0, 1], got {hit_rate}")
        self._arm((str(model_version), str(arm))).baseline = float(hit_rate)

    def get(self, model_version: str, arm: str = "champion") -> HitRate | None:
        """The hit-rate of one version and arm, or None if it never served a list."""
        key = (str(model_version), str(arm))
        stats = self._stats.get(key)
        if stats is None:
            return None
        recent = len(stats.recent)
        return HitRate(
            model_version=key[0],
            arm=key[1],
            judged=stats.judged,
            hits=stats.hits,
            hit_rate=stats.hits / stats.judged if stats.judged else None,
            recent_judged=recent,
            recent_hit_rate=sum(stats.recent) / recent if recent else None,
            baseline_hit_rate=stats.baseline,
            expired=stats.expired,
        )

    def all(self) -> list[HitRate]:
        """Every (version, arm) seen, sorted by version then arm."""
        return [self.get(version, arm) for version, arm in sorted(self._stats)]  # type: ignore[misc]

    @property
    def open_lists(self) -> int:
        """Lists served but not judged yet."""
        return sum(len(lists) for lists in self._open.values())

    @property
    def tracked_users(self) -> int:
        return len(self._open)
