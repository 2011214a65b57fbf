"""The reference profile: what "normal" looked like in a model's training snapshot.

A :class:`ReferenceProfile` holds, per monitored feature, the reference buckets
and their shares (category mix, item popularity buckets, price and user-activity
quantile bins, and optionally a sample of the model's own scores). It is small,
plain JSON, so it can ride in the model bundle's lineage or sit in the lake
(``<lake>/monitoring/profiles/<snapshot_id>.json``); the drift monitor compares
each live window with it (:func:`aisys.monitoring.drift.compare_to_profile`).

Item popularity buckets: the reference's items ranked by event count are cut
into ``n`` buckets of about equal event share (the head bucket holds the few
items that take the first 1/n of all events, the last bucket the long tail),
plus an ``unseen`` bucket for items the ranking never saw. New items landing
in the catalogue, or the head losing share, both move mass between buckets.
Rankings (and users' favourite categories) come from the reference's earlier
half and shares from its later half, so the reference shares are out-of-sample,
like every live window.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from aisys.data.lake import Lake, filesystem_for
from aisys.monitoring.drift import (
    EPSILON,
    binned_counts,
    category_shares,
    events_per_user,
    quantile_cuts,
)

if TYPE_CHECKING:
    from aisys.config import AppConfig, PathsConfig

PROFILE_FORMAT_VERSION = 1
UNSEEN = "unseen"


@dataclass
class NumericReference:
    """Quantile bins of a numeric feature: interior ``cuts`` and the reference share per bin."""

    cuts: list[float]
    probabilities: list[float]
    window_events: int | None = None  # user activity only: the chunk size the counts were taken over

    @classmethod
    def from_values(cls, values: Iterable[float], n_bins: int, window_events: int | None = None) -> "NumericReference | None":
        """Bins at the quantiles of ``values``; None when there is no finite value."""
        x = np.asarray(list(values) if not isinstance(values, (np.ndarray, pd.Series)) else values, dtype=np.float64)
        x = x[np.isfinite(x)]
        if len(x) == 0:
            return None
        cuts = quantile_cuts(x, n_bins)
        counts = binned_counts(cuts, x)
        return cls(cuts=cuts, probabilities=(counts / counts.sum()).tolist(), window_events=window_events)

    def probabilities_array(self) -> np.ndarray:
        return np.asarray(self.probabilities, dtype=np.float64)


@dataclass
class PopularityReference:
    """Reference items mapped to popularity buckets (0 = head), and each bucket's share of events."""

    item_bucket: dict[str, int]
    bucket_names: list[str]  # the last one is ``unseen``
    shares: list[float]

    @classmethod
    def from_items(cls, items: Iterable[str], n_buckets: int = 5) -> "PopularityReference | None":
        """Buckets of about equal event share over items ranked by event count.

        Items are ranked on the earlier half of ``items`` (in time order) and the
        shares measured on the later half: ranked in-sample, the items that happened
        to be rare land in the tail and then regress upwards in any later window, a
        false drift. Measured out of sample, the reference share is what a later
        window shows when nothing changed (including some ``unseen`` items).
        """
        if n_buckets < 1:
            raise ValueError(f"n_buckets must be at least 1, got {n_buckets}")
        series = pd.Series(list(items) if not isinstance(items, pd.Series) else items).astype(str).reset_index(drop=True)
        if series.empty:
            return None
        half = len(series) // 2 if len(series) >= 2 else len(series)
        counts = series.iloc[:half].value_counts()
        # Tie order must not depend on hashing: rank by count, then by id.
        frame = counts.rename_axis("item").reset_index(name="n").sort_values(["n", "item"], ascending=[False, True])
        share_before = (frame["n"].cumsum() - frame["n"]) / frame["n"].sum()
        bucket = np.minimum((share_before.to_numpy() * n_buckets).astype(np.int64), n_buckets - 1)
        names = [f"bucket_{k + 1}_of_{n_buckets}" for k in range(n_buckets)] + [UNSEEN]
        reference = cls(item_bucket=dict(zip(frame["item"].tolist(), bucket.tolist())), bucket_names=names, shares=[])
        later = reference.bucket_counts(series.iloc[half:] if half < len(series) else series)
        reference.shares = (later / later.sum()).tolist()
        return reference

    def bucket_counts(self, items: Iterable[str]) -> np.ndarray:
        """Events per bucket for ``items`` (unknown items count as ``unseen``)."""
        unseen = len(self.bucket_names) - 1
        series = pd.Series(list(items) if not isinstance(items, pd.Series) else items, dtype=object).astype(str)
        codes = series.map(self.item_bucket).fillna(unseen).astype(np.int64).to_numpy()
        return np.bincount(codes, minlength=len(self.bucket_names)).astype(np.float64)

    def bucket_of(self, items: Iterable[str]) -> list[str]:
        """The bucket name of each item (for per-row reports)."""
        unseen = len(self.bucket_names) - 1
        return [self.bucket_names[self.item_bucket.get(str(i), unseen)] for i in items]

    def reference_shares(self) -> np.ndarray:
        return np.asarray(self.shares, dtype=np.float64)


@dataclass
class TasteReference:
    """Each reference user's favourite categories, and how often events land in them.

    Buckets: the event's category is one of the user's ``top_k`` favourites
    (``in_taste``), is not (``off_taste``), or the user is unknown (``new_user``).
    A taste shift leaves the overall category mix alone (users trade tastes) but
    sends events ``off_taste``. Favourites come from the earlier half of the
    reference and the shares from the later half, so the reference share is an
    out-of-sample one, like the live share.
    """

    user_top: dict[str, list[str]]
    shares: list[float]  # in_taste, off_taste, new_user
    top_k: int = 2

    BUCKETS = ("in_taste", "off_taste", "new_user")

    @classmethod
    def from_events(cls, users: pd.Series, categories: pd.Series, top_k: int = 2,
                    max_users: int = 100_000) -> "TasteReference | None":
        frame = pd.DataFrame({"user": users.astype(str).to_numpy(), "category": categories.to_numpy()}).dropna()
        if len(frame) < 2:
            return None
        half = len(frame) // 2
        user_top = _favourites(frame.iloc[:half], top_k, max_users)
        reference = cls(user_top=user_top, shares=[1.0, 0.0, 0.0], top_k=top_k)
        counts = reference.bucket_counts(frame["user"].iloc[half:], frame["category"].iloc[half:])
        reference.shares = (counts / counts.sum()).tolist() if counts.sum() else [1.0, 0.0, 0.0]
        return reference

    def bucket_counts(self, users: Iterable, categories: Iterable) -> np.ndarray:
        """Events per bucket (rows without a category are left out)."""
        counts = np.zeros(3, dtype=np.float64)
        for user, category in zip(users, categories):
            if category is None or (isinstance(category, float) and np.isnan(category)):
                continue
            top = self.user_top.get(str(user))
            counts[2 if top is None else (0 if str(category) in top else 1)] += 1
        return counts

    def reference_shares(self) -> np.ndarray:
        return np.asarray(self.shares, dtype=np.float64)


def _favourites(frame: pd.DataFrame, top_k: int, max_users: int) -> dict[str, list[str]]:
    counts = frame.groupby(["user", "category"]).size().rename("n").reset_index()
    # Ties broken by category name, so the same table always gives the same favourites.
    counts = counts.sort_values(["user", "n", "category"], ascending=[True, False, True])
    top = counts.groupby("user").head(top_k)
    activity = counts.groupby("user")["n"].sum().sort_values(ascending=False, kind="stable")
    keep = set(activity.index[:max_users])
    return {user: [str(c) for c in group["category"]] for user, group in top.groupby("user") if user in keep}


@dataclass
class ReferenceProfile:
    """Reference distributions of one training snapshot (and optionally one model's scores)."""

    snapshot_id: str | None
    created_at: str
    n_events: int
    model_version: str | None = None
    epsilon: float = EPSILON
    category: dict[str, float] | None = None
    popularity: PopularityReference | None = None
    price: NumericReference | None = None
    activity: NumericReference | None = None
    scores: NumericReference | None = None
    taste: TasteReference | None = None
    format_version: int = PROFILE_FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def features(self) -> list[str]:
        """The features this profile can compare."""
        names = {"category": self.category, "item_popularity": self.popularity, "price": self.price,
                 "user_activity": self.activity, "user_taste": self.taste, "score": self.scores}
        return [name for name, ref in names.items() if ref is not None]

    def with_scores(self, scores: Sequence[float], n_bins: int = 10, model_version: str | None = None) -> "ReferenceProfile":
        """A copy whose score reference is ``scores`` (e.g. the model's scores on its holdout)."""
        data = self.to_dict()
        data["scores"] = asdict(NumericReference.from_values(scores, n_bins)) if len(scores) else None
        if model_version is not None:
            data["model_version"] = str(model_version)
        return ReferenceProfile.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReferenceProfile":
        data = dict(data)
        version = data.get("format_version", PROFILE_FORMAT_VERSION)
        if version != PROFILE_FORMAT_VERSION:
            raise ValueError(f"reference profile format_version {version} is not {PROFILE_FORMAT_VERSION}: rebuild it")
        for key in ("price", "activity", "scores"):
            if data.get(key) is not None:
                data[key] = NumericReference(**data[key])
        if data.get("popularity") is not None:
            data["popularity"] = PopularityReference(**data["popularity"])
        if data.get("taste") is not None:
            data["taste"] = TasteReference(**data["taste"])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ReferenceProfile":
        return cls.from_dict(json.loads(text))


def build_profile(
    events: pd.DataFrame | pa.Table,
    *,
    snapshot_id: str | None = None,
    model_version: str | None = None,
    scores: Sequence[float] | None = None,
    n_bins: int = 10,
    popularity_buckets: int = 5,
    activity_window_events: int = 5000,
    max_categories: int = 50,
    now: datetime | None = None,
) -> ReferenceProfile:
    """Profile a training table (``EVENT_SCHEMA`` columns; ``category`` and ``price`` optional).

    Rows should be in time order: user activity is counted per consecutive
    chunk of ``activity_window_events`` events, the monitor's window size.
    """
    frame = events.to_pandas() if isinstance(events, pa.Table) else events
    missing = [c for c in ("user_id", "item_id") if c not in frame.columns]
    if missing:
        raise ValueError(f"events lack column(s) {missing}; got {list(frame.columns)}")
    if "timestamp" in frame.columns and not frame["timestamp"].is_monotonic_increasing:
        frame = frame.sort_values("timestamp", kind="stable")
    created = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat()
    has_category = "category" in frame.columns and frame["category"].notna().any()
    return ReferenceProfile(
        snapshot_id=snapshot_id,
        created_at=created,
        n_events=int(len(frame)),
        model_version=None if model_version is None else str(model_version),
        category=category_shares(frame["category"], top_k=max_categories) if has_category else None,
        popularity=PopularityReference.from_items(frame["item_id"], popularity_buckets),
        price=NumericReference.from_values(frame["price"], n_bins) if "price" in frame.columns else None,
        activity=NumericReference.from_values(
            events_per_user(frame["user_id"], activity_window_events), n_bins, window_events=activity_window_events
        ) if len(frame) else None,
        scores=NumericReference.from_values(scores, n_bins) if scores is not None and len(scores) else None,
        taste=TasteReference.from_events(frame["user_id"], frame["category"]) if has_category else None,
    )


_PROFILE_COLUMNS = ["user_id", "item_id", "category", "price", "event_type", "timestamp"]


def read_reference_events(cfg: "AppConfig", snapshot_id: str | None = None, window_days: int | None = None) -> pd.DataFrame:
    """The training table of ``snapshot_id`` (latest if None) as pandas, limited to its last
    ``window_days`` days (default ``cfg.monitor.train_window_days``), in time order."""
    table = Lake.from_config(cfg.paths).read_events(snapshot_id, columns=_PROFILE_COLUMNS)
    frame = table.to_pandas()
    window_days = cfg.monitor.train_window_days if window_days is None else window_days
    if window_days and len(frame):
        frame = frame[frame["timestamp"] > frame["timestamp"].max() - timedelta(days=window_days)]
    return frame.reset_index(drop=True)


def profile_from_lake(
    cfg: "AppConfig",
    snapshot_id: str | None = None,
    model_version: str | None = None,
    scores: Sequence[float] | None = None,
) -> ReferenceProfile:
    """Profile a lake snapshot (latest if None) with the monitor's settings."""
    if snapshot_id is None:
        latest = Lake.from_config(cfg.paths).latest()
        if latest is None:
            raise LookupError(f"the lake at {cfg.paths.lake_uri} has no snapshot to profile: ingest first")
        snapshot_id = latest.snapshot_id
    frame = read_reference_events(cfg, snapshot_id)
    return build_profile(
        frame,
        snapshot_id=snapshot_id,
        model_version=model_version,
        scores=scores,
        n_bins=cfg.monitor.profile_bins,
        activity_window_events=cfg.monitor.window_events,
    )


def profile_path(lake_uri: str, snapshot_id: str) -> str:
    """Where a snapshot's profile lives in the lake."""
    return f"{lake_uri.rstrip('/')}/monitoring/profiles/{snapshot_id}.json"


def write_profile(lake_uri: str, profile: ReferenceProfile, paths: "PathsConfig | None" = None) -> str:
    """Store ``profile`` under the lake (local path or URI, reached with ``paths``' S3 settings); returns its location."""
    if not profile.snapshot_id:
        raise ValueError("a profile needs a snapshot_id to be stored in the lake")
    location = profile_path(lake_uri, profile.snapshot_id)
    fs, path = filesystem_for(location, paths)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(profile.to_json().encode())
    return location


def read_profile(location: str, paths: "PathsConfig | None" = None) -> ReferenceProfile:
    """Load a profile written by :func:`write_profile` (local path or URI, reached with ``paths``' S3 settings)."""
    fs, path = filesystem_for(location, paths)
    with fs.open_input_stream(path) as stream:
        return ReferenceProfile.from_json(stream.read().decode())
