"""Evidently ``DataDriftPreset`` reports as self-contained HTML in the lake, linked from MLflow.

The fast statistics (:mod:`aisys.monitoring.drift`) run every few hundred events;
this report is the slower, human-readable view: per-column drift tests with
plots, written to ``<lake>/reports/drift/<time>-<token>.html``. The drifted
columns are read from the snapshot's JSON: tests whose status is ``FAIL``.
(Evidently switches method with sample size, K-S p-values below 1,000 rows and
Wasserstein/Jensen-Shannon above, so the raw value's direction differs; the test
status does not.)

Evidently is imported inside the functions: it takes seconds to import, and
only the processes that write reports need it.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

if TYPE_CHECKING:
    from aisys.config import AppConfig, PathsConfig
    from aisys.monitoring.profile import ReferenceProfile

NUMERICAL_COLUMNS: tuple[str, ...] = ("price",)
CATEGORICAL_COLUMNS: tuple[str, ...] = ("category", "event_type", "item_popularity")
REPORT_TAG = "monitoring.drift_report"
DRIFTED_TAG = "monitoring.drifted_columns"


@dataclass(frozen=True)
class DriftReport:
    """A written report: where it is, which columns drifted, which were compared."""

    path: str
    drifted_columns: list[str]
    columns: list[str]
    created_at: str
    n_reference: int
    n_current: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def report_frame(events: pd.DataFrame, profile: "ReferenceProfile | None" = None) -> pd.DataFrame:
    """The per-event columns a report compares: category, event type, price, and the item's
    popularity bucket in ``profile`` (new items count in the tail bucket)."""
    frame = pd.DataFrame(index=range(len(events)))
    for column in ("category", "event_type"):
        if column in events.columns:
            frame[column] = events[column].astype(object).where(events[column].notna(), None).to_numpy()
    if "price" in events.columns:
        frame["price"] = pd.to_numeric(events["price"], errors="coerce").to_numpy()
    if profile is not None and profile.popularity is not None and "item_id" in events.columns:
        buckets = pd.Series(profile.popularity.bucket_of(events["item_id"]), dtype=object)
        # Evidently's chi-square test cannot take a value the reference lacks (one event on
        # one new item would read as drift), so unseen items join the tail bucket here; the
        # fast statistics keep them apart, with smoothing.
        names = profile.popularity.bucket_names
        frame["item_popularity"] = buckets.replace({names[-1]: names[-2]}).to_numpy() if len(names) > 1 else buckets
    return frame


def drifted_columns(snapshot: dict[str, Any]) -> list[str]:
    """Columns whose drift test failed, from a snapshot's ``json.loads(snapshot.json())``."""
    drifted: list[str] = []
    for test in snapshot.get("tests", []):
        params = (test.get("metric_config") or {}).get("params") or {}
        if "ValueDrift" in str(params.get("type", "")) and test.get("status") == "FAIL":
            column = params.get("column")
            if column is not None and column not in drifted:
                drifted.append(str(column))
    return drifted


def _usable_columns(reference: pd.DataFrame, current: pd.DataFrame, wanted: Sequence[str]) -> list[str]:
    # A column empty on either side cannot be compared (MovieLens has no prices).
    return [c for c in wanted if c in reference.columns and c in current.columns
            and reference[c].notna().any() and current[c].notna().any()]


AISYS_PSI = "aisys_psi"
DEFAULT_PSI_THRESHOLD = 0.2  # MonitorConfig.psi_threshold's default


def register_aisys_psi() -> str:
    """Register the monitor's own PSI (:func:`aisys.monitoring.drift.column_psi`) as an Evidently stat test.

    Evidently's built-in ``psi`` bins differently (30 bins over both samples) and defaults to 0.1, so its
    verdicts disagreed with the retrain trigger's; with this test the report shows the trigger's statistic
    and threshold. Idempotent; returns the test's name.
    """
    from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    from aisys.monitoring.drift import column_psi

    def aisys_psi(reference: pd.Series, current: pd.Series, feature_type, threshold: float) -> tuple[float, bool]:
        value = column_psi(reference, current, numerical=feature_type == ColumnType.Numerical)
        return value, value > threshold  # strictly above, as the trigger counts it

    register_stattest(StatTest(name=AISYS_PSI, display_name="PSI (aisys monitor: reference quantile bins)",
                               allowed_feature_types=[ColumnType.Categorical, ColumnType.Numerical],
                               default_threshold=DEFAULT_PSI_THRESHOLD), aisys_psi)
    return AISYS_PSI


def run_drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numerical: Sequence[str] = NUMERICAL_COLUMNS,
    categorical: Sequence[str] = CATEGORICAL_COLUMNS,
    psi_threshold: float = DEFAULT_PSI_THRESHOLD,
):
    """Run ``DataDriftPreset`` with the monitor's PSI and threshold (a column drifts when its PSI >
    ``psi_threshold``, as in the trigger); returns ``(snapshot, drifted columns, compared columns)``."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    if len(reference) == 0 or len(current) == 0:
        raise ValueError(f"a drift report needs rows on both sides (reference {len(reference)}, current {len(current)})")
    num = _usable_columns(reference, current, numerical)
    cat = _usable_columns(reference, current, categorical)
    columns = num + cat
    if not columns:
        raise ValueError(
            f"no column to compare: wanted {list(numerical) + list(categorical)}, "
            f"reference has {list(reference.columns)}, current has {list(current.columns)}"
        )
    definition = DataDefinition(numerical_columns=num, categorical_columns=cat)
    preset = DataDriftPreset(method=register_aisys_psi(), threshold=psi_threshold)
    snapshot = Report([preset], include_tests=True).run(
        current_data=Dataset.from_pandas(current[columns].reset_index(drop=True), data_definition=definition),
        reference_data=Dataset.from_pandas(reference[columns].reset_index(drop=True), data_definition=definition),
    )
    return snapshot, drifted_columns(json.loads(snapshot.json())), columns


def report_location(lake_uri: str, now: datetime | None = None) -> str:
    """A new, unique report path under ``<lake>/reports/drift/``."""
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{lake_uri.rstrip('/')}/reports/drift/{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{secrets.token_hex(3)}.html"


def write_drift_report(
    lake_uri: str,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    now: datetime | None = None,
    numerical: Sequence[str] = NUMERICAL_COLUMNS,
    categorical: Sequence[str] = CATEGORICAL_COLUMNS,
    paths: "PathsConfig | None" = None,
    psi_threshold: float = DEFAULT_PSI_THRESHOLD,
) -> DriftReport:
    """Run the report and store its HTML in the lake (local path or ``s3://``, reached with ``paths``' S3
    settings); return where and what drifted."""
    from aisys.data.lake import filesystem_for

    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    snapshot, drifted, columns = run_drift_report(reference, current, numerical, categorical, psi_threshold)
    location = report_location(lake_uri, now)
    fs, path = filesystem_for(location, paths)
    if "://" not in location:
        location = path
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with tempfile.TemporaryDirectory() as tmp:
        # save_html writes a local file: write it there, then copy it to any filesystem.
        local = Path(tmp) / "report.html"
        snapshot.save_html(str(local))
        with fs.open_output_stream(path) as out:
            out.write(local.read_bytes())
    return DriftReport(
        path=location,
        drifted_columns=drifted,
        columns=columns,
        created_at=now.isoformat(),
        n_reference=len(reference),
        n_current=len(current),
    )


def log_report_to_mlflow(
    cfg: "AppConfig",
    path: str,
    run_id: str | None = None,
    model_version: str | None = None,
    drifted: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Link a report from MLflow: as an artifact and tag of ``run_id``, and/or as tags of
    ``model_version`` of ``cfg.registry.model_name``. Returns what was linked."""
    if run_id is None and model_version is None:
        raise ValueError("log_report_to_mlflow needs a run_id or a model_version to link the report to")
    from aisys.registry.mlflow_registry import log_run_artifact, tag_version

    linked: dict[str, Any] = {"path": path}
    tags = {REPORT_TAG: path}
    if drifted is not None:
        tags[DRIFTED_TAG] = ",".join(drifted)
    if run_id is not None:
        if "://" not in path:  # a local file can travel as an artifact; a remote one is linked by its URI
            linked["artifact"] = log_run_artifact(cfg, run_id, path, "monitoring/drift_reports")
        tag_version(cfg, None, tags, [run_id])
        linked["run_id"] = run_id
    if model_version is not None:
        tag_version(cfg, model_version, tags)
        linked["model_version"] = f"models:/{cfg.registry.model_name}/{model_version}"
    return linked
